/* A static probe run inside kiln instances by tests/agent/test_instance_sandbox.py: it tries system calls
 * the seccomp profile refuses (or filters by argument) and reports what the kernel answered, and it
 * can allocate memory or fork up to a bound. Every mode prints one line of "key=value" words. */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/personality.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *answer(long rc) {
    static char buf[64];
    if (rc != -1) {
        return "ok";
    }
    switch (errno) {
    case EPERM: return "EPERM";
    case ENOSYS: return "ENOSYS";
    case EINVAL: return "EINVAL";
    case EFAULT: return "EFAULT";
    case EACCES: return "EACCES";
    case ENOKEY: return "ENOKEY";
    case EAGAIN: return "EAGAIN";
    default: snprintf(buf, sizeof buf, "errno%d", errno); return buf;
    }
}

static int syscalls(void) {
    printf("keyctl=%s ", answer(syscall(SYS_keyctl, 0 /* GET_KEYRING_ID */, -3 /* session */, 0)));
    printf("unshare_user=%s ", answer(unshare(CLONE_NEWUSER)));
    printf("personality_query=%s ", answer(personality(0xffffffff)));
    printf("personality_norandom=%s ", answer(personality(ADDR_NO_RANDOMIZE)));
#ifdef SYS_clone3
    printf("clone3=%s ", answer(syscall(SYS_clone3, NULL, 0)));
#endif
    pid_t pid = fork();
    if (pid == 0) {
        _exit(0);
    }
    printf("fork=%s\n", pid > 0 && waitpid(pid, NULL, 0) == pid ? "ok" : answer(-1));
    return 0;
}

static int hog(long mib) {
    for (long i = 1; i <= mib; i++) {
        char *p = malloc(1 << 20);
        if (p == NULL) {
            printf("hog=malloc-failed at=%ld\n", i);
            return 1;
        }
        memset(p, 0x5a, 1 << 20);
    }
    printf("hog=survived mib=%ld\n", mib);
    return 0;
}

static int forks(int n) {
    pid_t *kids = calloc(n, sizeof *kids);
    int made = 0;
    const char *failed = "none";
    for (int i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            sleep(60);
            _exit(0);
        }
        if (pid < 0) {
            failed = answer(-1);
            break;
        }
        kids[made++] = pid;
    }
    for (int i = 0; i < made; i++) {
        kill(kids[i], SIGKILL);
        waitpid(kids[i], NULL, 0);
    }
    printf("forked=%d failed=%s\n", made, failed);
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc == 2 && strcmp(argv[1], "syscalls") == 0) {
        return syscalls();
    }
    if (argc == 3 && strcmp(argv[1], "hog") == 0) {
        return hog(atol(argv[2]));
    }
    if (argc == 3 && strcmp(argv[1], "forks") == 0) {
        int n = atoi(argv[2]);
        return forks(n > 0 && n <= 4096 ? n : 1);
    }
    fprintf(stderr, "usage: probe syscalls | hog MIB | forks N\n");
    return 2;
}
