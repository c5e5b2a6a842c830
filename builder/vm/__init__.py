"""VM images: deterministic writers (newc cpio, EROFS, dm-verity, GPT), module selection, the guest
init and the VM image directory. See ``docs/vm.md`` and ADR 0014."""
