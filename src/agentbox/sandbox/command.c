/*
 * Starting a command, the same way for `run` (run.c) and `spawn` (shim.c): the workspace's task
 * limit, the file execvp() would run looked up before the fork, and what the exec did.
 */

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helper.h"

/* The workspace's task limit is an argument of PID 1 ("init -P N"), where no
 * workload can change it; every command runs with it as RLIMIT_NPROC, soft and
 * hard, so it cannot be raised again without privileges. */
void apply_task_limit(void) {
    char args[4096];
    int fd = open("/proc/1/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    ssize_t n = read(fd, args, sizeof args - 1);
    close(fd);
    if (n <= 0)
        return;
    args[n] = '\0';
    for (char *arg = args; arg < args + n; arg += strlen(arg) + 1) {
        if (!strcmp(arg, "-P") && arg + strlen(arg) + 1 < args + n) {
            long long limit = atoll(arg + strlen(arg) + 1);
            struct rlimit rl = {(rlim_t)limit, (rlim_t)limit};
            if (limit > 0)
                setrlimit(RLIMIT_NPROC, &rl);
            return;
        }
    }
}

/* The file execvp() would run for NAME, found before the fork: under gVisor every failed
 * execve() of the PATH search costs about 2 ms, and `true` is found in the fourth directory
 * of Debian's PATH.  NAME itself when it has a slash or is not found (execvp then reports
 * why); `buf` holds the result otherwise. */
const char *command_path(const char *name, char *buf, size_t size) {
    const char *path = getenv("PATH");
    if (strchr(name, '/') || !*name)
        return name;
    for (const char *dir = path && *path ? path : "/bin:/usr/bin"; dir;) {
        const char *end = strchr(dir, ':');
        int len = end ? (int)(end - dir) : (int)strlen(dir);
        struct stat st;
        /* An empty entry is the current directory, as for execvp. */
        if (snprintf(buf, size, "%.*s%s%s", len, dir, len ? "/" : "./", name) < (int)size &&
            access(buf, X_OK) == 0 && stat(buf, &st) == 0 && S_ISREG(st.st_mode))
            return buf;
        dir = end ? end + 1 : NULL;
    }
    return name;
}

/* What the child's exec did, read from the read end `ep` of its CLOEXEC pipe: EOF, it
 * succeeded (0); an int, it failed with that errno (the child is reaped then). */
int exec_result(int ep, pid_t child) {
    int exec_errno;
    ssize_t n;
    while ((n = read(ep, &exec_errno, sizeof exec_errno)) < 0 && errno == EINTR)
        ;
    close(ep);
    if (n != (ssize_t)sizeof exec_errno)
        return 0;
    waitpid(child, NULL, 0);
    return exec_errno;
}
