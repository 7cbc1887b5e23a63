/*
 * Small system utilities the helper's parts share: the monotonic clock, the signals init and run
 * take synchronously, and closing the fds a forked process must not keep.
 */

#include <dirent.h>
#include <signal.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "helper.h"

long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * NSEC + ts.tv_nsec;
}

sigset_t term_and_chld(void) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    return set;
}

/* Close every fd >= 3 but keep1/keep2/keep3.  Lists /proc/self/fd, which stays
 * cheap under a huge RLIMIT_NOFILE; falls back to a bounded loop. */
void close_other_fds(int keep1, int keep2, int keep3) {
    int fds[1024], count = 0;
    DIR *d = opendir("/proc/self/fd");
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL && count < 1024) {
        int fd = atoi(de->d_name);   /* "." and ".." give 0 */
        if (fd >= 3 && fd != keep1 && fd != keep2 && fd != keep3 && fd != dirfd(d))
            fds[count++] = fd;
    }
    if (d)
        closedir(d);
    for (int fd = 3; !d && fd < 65536; fd++)
        if (fd != keep1 && fd != keep2 && fd != keep3)
            close(fd);
    for (int i = 0; i < count; i++)
        close(fds[i]);
}
