// kiln fleet dashboard: polls /api/status once a second and redraws. Read-only; no framework.
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function duration(seconds) {
  if (seconds >= 3600 && seconds % 3600 === 0) return `${seconds / 3600}h`;
  if (seconds >= 60 && seconds % 60 === 0) return `${seconds / 60}m`;
  return `${seconds}s`;
}

function renderReleases(releases) {
  const box = document.getElementById("releases");
  if (!releases.length) return;
  box.replaceChildren(...releases.map((r) => {
    const card = el("div", { class: "release", "data-release": r.version });
    card.append(el("h3", {}, `Release v${r.version}`));
    if (r.halted && r.halt) {
      card.append(el("div", { class: "halt", id: `halt-${r.version}`, "data-halt": r.version },
        el("b", {}, "Halted"), ` by ${r.halt.host}: ${r.halt.reason}`));
    }
    const waves = el("div", { class: "waves" });
    for (const w of r.waves) {
      const chips = el("div", { class: "chips" }, ...w.hosts.map((h) =>
        el("span", { class: `chip ${h.progress}`, "data-wave-host": h.id, "data-progress": h.progress }, `${h.id} · ${h.progress}`)));
      if (!w.hosts.length) chips.append(el("span", { class: "muted" }, "no hosts"));
      const limits = [w.parallel ? `${w.parallel} at a time` : "", w.soak ? `soak ${duration(w.soak)}` : ""].filter(Boolean).join(", ");
      waves.append(el("div", { class: "wave", "data-wave": w.index },
        el("div", { class: "title" }, el("span", {}, `Wave ${w.index}: ${w.group}`), el("span", { class: `state ${w.state}` }, w.state)),
        limits ? el("div", { class: "muted" }, limits) : "",
        chips));
    }
    card.append(waves);
    return card;
  }));
}

function renderGroups(groups) {
  const box = document.getElementById("groups");
  const names = Object.keys(groups);
  if (!names.length) return;
  box.replaceChildren(...names.map((name) => {
    const g = groups[name];
    const held = g.slots.length, max = g.max || held || 1;
    const rows = g.hosts.map((h) => el("tr", { "data-host": h.id, "data-version": h.version ?? "" },
      el("td", {}, h.id),
      el("td", { class: "v" }, h.version == null ? "-" : `v${h.version}`),
      el("td", { class: "h" }, el("span", { class: `health ${h.health}` }, h.health))));
    return el("div", { class: "group", "data-group": name },
      el("div", { class: "head" }, el("span", {}, name), el("span", { class: "muted" }, `${held}/${max} updating`)),
      el("div", { class: "bar" }, el("span", { style: `width:${Math.min(100, (100 * held) / max)}%` })),
      el("table", {}, el("tbody", {}, ...rows)),
      held ? el("div", { class: "muted" }, `slots: ${g.slots.map((s) => s.id).join(", ")}`) : "");
  }));
}

async function tick() {
  const dot = document.getElementById("live");
  try {
    const resp = await fetch("/api/status", { cache: "no-store" });
    const doc = await resp.json();
    if (!resp.ok) throw new Error(doc.value || resp.status);
    document.getElementById("fleet-name").textContent = doc.fleet || "";
    document.getElementById("revision").textContent = doc.revision;
    renderReleases(doc.releases);
    renderGroups(doc.groups);
    dot.className = "dot on";
    document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    dot.className = "dot off";
    document.getElementById("updated").textContent = `unreachable: ${err.message}`;
  }
}

tick();
setInterval(tick, 1000);
