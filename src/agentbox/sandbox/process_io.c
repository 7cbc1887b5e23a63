/*
 * A background process's output read back and its input sent to it:
 *
 *   output PID OFFSET [-f]   its log segments from OFFSET (following them with inotify under -f)
 *   input PID [-c | -w COLS ROWS]   stdin, its end, or a terminal size, through its supervisor's
 *                            abstract socket (shim.c)
 *
 * processes.c tells the formats.
 */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "helper.h"
#include "processes.h"

/* ---- output --------------------------------------------------------------------- */

static int cmp_ll(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return x < y ? -1 : x > y;
}

/* The segments' start offsets, ascending; how many. */
static int segments(const char *dir, long long *starts) {
    DIR *d = opendir(dir);
    struct dirent *de;
    int n = 0;
    while (d && (de = readdir(d)) != NULL && n < MAX_SEGMENTS)
        if (!strncmp(de->d_name, "out.", 4))
            starts[n++] = atoll(de->d_name + 4);
    if (d)
        closedir(d);
    qsort(starts, (size_t)n, sizeof *starts, cmp_ll);
    return n;
}

static int send_record(int kind, const char *data, size_t len) {
    unsigned char head[5] = {(unsigned char)kind};
    put_u32(head + 1, len);
    fwrite(head, 1, sizeof head, stdout);
    fwrite(data, 1, len, stdout);
    return ferror(stdout) ? -1 : 0;
}

int cmd_output(int argc, char **argv) {
    char dir[128], path[192];
    int pid, follow = argc == 4 && !strcmp(argv[3], "-f");
    if (argc < 3 || argc > 4 || (argc == 4 && !follow))
        return usage();
    if (proc_dir(argv[1], dir, sizeof dir, &pid) < 0)
        return 1;
    long long want = atoll(argv[2]), starts[MAX_SEGMENTS];
    int n = segments(dir, starts);
    long long pos = n ? starts[0] : 0;
    for (int i = 0; i < n; i++)
        if (starts[i] <= want)
            pos = starts[i];
    long long begin = want > pos ? want : pos;
    printf("S %lld\n", begin);

    int watch = follow ? inotify_init1(IN_CLOEXEC | IN_NONBLOCK) : -1;
    if (watch >= 0)
        inotify_add_watch(watch, dir, IN_MODIFY | IN_CREATE | IN_MOVED_TO);
    char *buf = malloc(BUFSZ);
    long long file_off = 0, quiet_since = now_ns();
    int fd = -1, ended = 0;
    for (;;) {
        if (fd < 0) {
            snprintf(path, sizeof path, "%s/out.%020lld", dir, pos);
            fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
            file_off = 0;
            if (fd < 0 && segments(dir, starts) > 0 && starts[0] > pos) {
                /* Rotated away while we read: go on from the oldest kept, and say where that is. */
                char where[32];
                int n = snprintf(where, sizeof where, "%lld", starts[0]);
                if (send_record(8, where, (size_t)n) < 0)
                    return 1;
                pos = begin = starts[0];
            }
        }
        unsigned char head[5];
        size_t len;
        if (fd >= 0 && pread(fd, head, sizeof head, file_off) == (ssize_t)sizeof head &&
            (len = get_u32(head + 1)) <= BUFSZ && pread(fd, buf, len, file_off + 5) == (ssize_t)len) {
            file_off += 5 + (long long)len;
            if (pos + (long long)len > begin) {
                long long skip = begin > pos ? begin - pos : 0;
                if (send_record(head[0], buf + skip, len - (size_t)skip) < 0)
                    return 1;
            }
            pos += (long long)len;
            quiet_since = now_ns();
            continue;
        }
        /* At the end of what this segment holds so far. */
        int n_now = fd >= 0 && file_off > 0 ? segments(dir, starts) : 0;
        if (n_now > 0 && starts[n_now - 1] >= pos) {
            /* Newer output is in another segment: the next one (it starts here), or, if that one
             * was rotated away already, the oldest kept (opening it below says so). */
            close(fd);
            fd = -1;
            continue;
        }
        if (ended) {   /* read once more after seeing "exit": the output came before it */
            size_t exit_len;
            snprintf(path, sizeof path, "%s/exit", dir);
            char *how = slurp(path, 256, &exit_len);
            send_record(0, how ? how : "", how ? exit_len : 0);
            return flush_stdout();
        }
        snprintf(path, sizeof path, "%s/exit", dir);
        if (access(path, F_OK) == 0) {
            ended = 1;
            continue;
        }
        if (!follow)
            return flush_stdout();
        if (fflush(stdout) != 0)
            return 1;   /* the host went away */
        if (now_ns() - quiet_since > KEEPALIVE_NS) {
            if (send_record(9, "", 0) < 0 || fflush(stdout) != 0)
                return 1;
            quiet_since = now_ns();
        }
        struct pollfd p = {.fd = watch, .events = POLLIN};
        if (watch < 0 || poll(&p, 1, 1000) <= 0) {
            if (watch < 0)
                usleep(50000);
            continue;
        }
        char events[4096];
        while (read(watch, events, sizeof events) > 0)
            ;
    }
}

/* ---- input -------------------------------------------------------------------- */

static int message(int c, char kind, const char *data, size_t len) {
    unsigned char head[5] = {(unsigned char)kind};
    char answer;
    put_u32(head + 1, len);
    if (write_all(c, (const char *)head, sizeof head) < 0 || write_all(c, data, len) < 0)
        return report_error(ESRCH, "the process has exited"), -1;
    ssize_t n = read(c, &answer, 1);
    if (n == 1 && answer == 'k')
        return 0;
    if (n == 1 && answer == 'n')
        return report_error(EBADF, kind == 'w' ? "the process has no terminal (start it with \"pty\")"
                                      : "the process was started without stdin (start it with \"stdin\": true)"), -1;
    if (n == 1 && answer == 'e')
        return report_error(EPIPE, "the process closed its stdin"), -1;
    if (n == 1)
        return report_error(EINVAL, "the process supervisor refused the request"), -1;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return report_error(ETIMEDOUT, "the process is not reading its stdin"), -1;
    return report_error(ESRCH, "the process has exited"), -1;
}

int cmd_input(int argc, char **argv) {
    char dir[128];
    int pid;
    if (argc < 2 || (argc > 2 && strcmp(argv[2], "-c") && strcmp(argv[2], "-w")) || (argc > 2 && !strcmp(argv[2], "-w") && argc != 5))
        return usage();
    if (proc_dir(argv[1], dir, sizeof dir, &pid) < 0)
        return 1;
    socklen_t len;
    struct sockaddr_un addr = control_address(pid, &len);
    int c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct timeval patience = {30, 0};
    if (c < 0 || connect(c, (struct sockaddr *)&addr, len) < 0)
        return report_error(ESRCH, "the process has exited");
    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &patience, sizeof patience);
    if (argc > 2 && !strcmp(argv[2], "-c"))
        return message(c, 'c', "", 0) < 0 ? 1 : (puts("OK 0"), flush_stdout());
    if (argc > 2) {
        char size[64];
        int len = snprintf(size, sizeof size, "%s %s", argv[3], argv[4]);
        return message(c, 'w', size, (size_t)len) < 0 ? 1 : (puts("OK 0"), flush_stdout());
    }
    char buf[BUFSZ];
    unsigned long long total = 0;
    for (;;) {
        ssize_t n = read(0, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        if (message(c, 'i', buf, (size_t)n) < 0)
            return 1;
        total += (unsigned long long)n;
    }
    printf("OK %llu\n", total);
    return flush_stdout();
}
