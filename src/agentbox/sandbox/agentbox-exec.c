/*
 * agentbox-exec: the in-container helper of agentbox.
 *
 * Copied into every workspace container, where it is PID 1 ("init") and the
 * wrapper for every command ("run") and file operation ("get", "put",
 * "mkdir").  Static and libc-only, so it works in any image, even one
 * without a shell.
 *
 * Build: cc -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -Werror -static -s \
 *           -o agentbox-exec agentbox-exec.c processes.c watch.c connect.c handshake.c
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/types.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helper.h"

#define READY_LINE "agentbox-exec ready"

int usage(void) {
    fputs("usage: agentbox-exec init [-M MAX_MEMORY_BYTES] [-P MAX_TASKS] [-S SOCKET] [-I WORKSPACE_ID]\n"
          "                            [-K KEY_FILE -T PORT] [-U UID[:GID]]\n"
          "       agentbox-exec run [-t SECONDS] [-m MAX_BYTES] [-i] -- ARGV...\n"
          "       agentbox-exec get PATH\n"
          "       agentbox-exec put PATH [-p MODE] [-s SIZE]\n"
          "       agentbox-exec mkdir PATH\n"
          "       agentbox-exec probe\n"
          "       agentbox-exec spawn [-i] [-c COLS -r ROWS] [-j META] -- ARGV...\n"
          "       agentbox-exec procs [PID] | output PID OFFSET [-f] | signal PID SIGNUM\n"
          "       agentbox-exec input PID [-c | -w COLS ROWS]\n"
          "       agentbox-exec watch PATH [-r]\n"
          "       agentbox-exec connect PORT\n", stderr);
    return 2;
}

/* ---- shared helpers ------------------------------------------------------- */

/* Symbolic errno names: the host maps them to API errors, so they must not
 * depend on the libc's strerror() wording. */
const char *errno_name(int e) {
    static const struct { int e; const char *n; } tab[] = {
        {ENOENT, "ENOENT"}, {EACCES, "EACCES"}, {EPERM, "EPERM"},
        {ENOTDIR, "ENOTDIR"}, {EISDIR, "EISDIR"}, {ELOOP, "ELOOP"},
        {ENAMETOOLONG, "ENAMETOOLONG"}, {ENOSPC, "ENOSPC"}, {EROFS, "EROFS"},
        {EEXIST, "EEXIST"}, {EINVAL, "EINVAL"}, {ENOMEM, "ENOMEM"},
        {EFBIG, "EFBIG"}, {EDQUOT, "EDQUOT"}, {EIO, "EIO"}, {EBUSY, "EBUSY"},
        {ESRCH, "ESRCH"}, {EBADF, "EBADF"}, {EPIPE, "EPIPE"}, {ETIMEDOUT, "ETIMEDOUT"},
        {ENOTSUP, "ENOTSUP"}, {ECONNREFUSED, "ECONNREFUSED"},
    };
    static char other[32];
    for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++)
        if (tab[i].e == e)
            return tab[i].n;
    snprintf(other, sizeof other, "E%d", e);
    return other;
}

/* Protocol error line on stdout; returns exit code 1 for convenience. */
int report_error(int e, const char *msg) {
    printf("E %s %s\n", errno_name(e), msg ? msg : strerror(e));
    fflush(stdout);
    return 1;
}

int flush_stdout(void) { return fflush(stdout) == 0 ? 0 : 1; }

/* write() everything, retrying on EINTR and waiting out EAGAIN (the fd we
 * were handed may be non-blocking).  Returns 0, or -1 with errno set. */
int write_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n >= 0) {
            buf += n;
            len -= (size_t)n;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            poll(&p, 1, -1);
        } else if (errno != EINTR) {
            return -1;
        }
    }
    return 0;
}

/* ---- output: straight to fds 1 and 2, or framed on the control socket ------ */

/* The connection a subcommand answers on when it came through the control
 * socket (see "serve"); -1 under `docker exec`, where fds 1 and 2 are the
 * exec's own streams. */
int frame_fd = -1;
static int text_out;   /* see base64_write */

int send_frame(int fd, int kind, const void *data, size_t len) {
    unsigned char head[5] = {(unsigned char)kind, (unsigned char)(len >> 24), (unsigned char)(len >> 16),
                             (unsigned char)(len >> 8), (unsigned char)len};
    /* Header and data in one write: over TCP, one segment rather than two for a small frame. */
    struct iovec iov[2] = {{head, sizeof head}, {(void *)data, len}};
    ssize_t n;
    while ((n = writev(fd, iov, len ? 2 : 1)) < 0 && errno == EINTR)
        ;
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
        return -1;
    if (n < 0)
        n = 0;   /* a non-blocking fd that is full: write_all below waits */
    if ((size_t)n < sizeof head)
        return write_all(fd, (const char *)head + n, sizeof head - (size_t)n) < 0 ? -1 : write_all(fd, data, len);
    n -= (ssize_t)sizeof head;
    return write_all(fd, (const char *)data + n, len - (size_t)n);
}

/* AGENTBOX_TEXT set: stdout carries text only (E2B's SDK decodes a command's output as UTF-8),
 * so each piece of it goes out as a line of base64. */

static ssize_t base64_write(void *cookie, const char *buf, size_t size) {
    (void)cookie;
    static const char digits[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *in = (const unsigned char *)buf;
    char *line = malloc((size + 2) / 3 * 4 + 1);
    if (!line)
        return -1;
    size_t n = 0;
    for (size_t i = 0; i < size; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (i + 1 < size ? (unsigned)in[i + 1] << 8 : 0) |
                     (i + 2 < size ? in[i + 2] : 0);
        line[n++] = digits[v >> 18 & 63];
        line[n++] = digits[v >> 12 & 63];
        line[n++] = i + 1 < size ? digits[v >> 6 & 63] : '=';
        line[n++] = i + 2 < size ? digits[v & 63] : '=';
    }
    line[n++] = '\n';
    int ok = write_all(1, line, n);
    free(line);
    return ok < 0 ? -1 : (ssize_t)size;
}

/* Output of stream 1 (stdout) or 2 (stderr).  Returns 0, or -1 with errno. */
int emit(int stream, const char *buf, size_t len) {
    if (frame_fd >= 0)
        return send_frame(frame_fd, stream, buf, len);
    if (text_out && stream == 1)
        return fflush(stdout) == 0 && base64_write(NULL, buf, len) == (ssize_t)len ? 0 : -1;
    return write_all(stream, buf, len);
}

/* Set while a control-socket worker serves a call it may outlive (see "serve"). */
static sigjmp_buf *call_done;
static pid_t worker_pid;

/* End the subcommand with `code`; over the control socket, the host learns it from the
 * last frame, and a worker that may serve again goes back to waiting. */
static void leave(int code) {
    if (frame_fd >= 0) {
        fflush(stdout);
        fflush(stderr);
        unsigned char c[4] = {(unsigned char)(code >> 24), (unsigned char)(code >> 16),
                              (unsigned char)(code >> 8), (unsigned char)code};
        send_frame(frame_fd, 3, c, sizeof c);
    }
    if (call_done && getpid() == worker_pid)   /* never in a child the subcommand forked */
        siglongjmp(*call_done, 1);
    if (text_out)
        fflush(stdout);
    _exit(code);
}

/* mkdir -p, mode 0755 (minus umask, like mkdir -p).  Returns 0 or errno. */
static int mkdir_p(const char *path) {
    char *p = strdup(path);
    if (!*path || !p) {
        free(p);
        return *path ? ENOMEM : ENOENT;
    }
    int e = 0;
    for (char *s = p + 1; !e; s++) {
        if (*s != '/' && *s != '\0')
            continue;
        char c = *s;
        *s = '\0';
        if (mkdir(p, 0755) < 0 && errno != EEXIST)
            e = errno;   /* a file in the middle of the path gives ENOTDIR */
        *s = c;
        if (c == '\0')
            break;
    }
    free(p);
    /* EEXIST for the last component may mean a non-directory is there. */
    struct stat st;
    if (!e && stat(path, &st) < 0)
        e = errno;
    return e ? e : S_ISDIR(st.st_mode) ? 0 : EEXIST;
}

static sigset_t term_and_chld(void) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    return set;
}

/* ---- init ----------------------------------------------------------------- */

long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * NSEC + ts.tv_nsec;
}

/* Memory in use by the whole sandbox, in bytes, as gVisor's /proc/meminfo
 * reports it (MemTotal - MemFree); -1 if it cannot be read. */
static long long sandbox_memory_used(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f)
        return -1;
    char line[256];
    long long total = -1, free_kb = -1, v;
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "MemTotal: %lld kB", &v) == 1)
            total = v;
        else if (sscanf(line, "MemFree: %lld kB", &v) == 1)
            free_kb = v;
    }
    fclose(f);
    return total < 0 || free_kb < 0 ? -1 : (total - free_kb) * 1024;
}

/* The process (other than PID 1) with the largest resident set, or -1. */
static pid_t largest_process(long long *rss_pages) {
    DIR *d = opendir("/proc");
    if (!d)
        return -1;
    pid_t best = -1;
    *rss_pages = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        if (*end || pid <= 1)
            continue;
        char path[64];
        snprintf(path, sizeof path, "/proc/%ld/statm", pid);
        FILE *f = fopen(path, "r");
        long long size, resident;
        if (!f)
            continue;
        if (fscanf(f, "%lld %lld", &size, &resident) == 2 && resident > *rss_pages) {
            *rss_pages = resident;
            best = (pid_t)pid;
        }
        fclose(f);
    }
    closedir(d);
    return best;
}

/* PID 1: reap orphans forever, exit at once on SIGTERM/SIGINT (128 + the signal).  The signals
 * are blocked and taken with sigtimedwait(): the kernel drops signals with the
 * default action that are sent to a PID namespace's init, but a blocked
 * signal is always queued.  No handlers.
 *
 * With -M BYTES it is also the sandbox's OOM killer.  Under gVisor the sandbox
 * (its kernel included) shares one host memory cgroup with the workload, and
 * the host's OOM killer would kill the whole sandbox; so the host limit gets
 * headroom, and init kills the largest process as soon as the workload uses
 * more than BYTES, which is what a process hitting a memory limit sees on
 * Linux (SIGKILL).  -P TASKS is read by `run` (see apply_task_limit).
 *
 * SIGUSR1 makes init let go of the control socket (-S): the server and its
 * workers end, the socket is closed and its file removed; SIGUSR2 listens
 * again.  Under gVisor the socket is a host socket, and a sandbox holding one
 * cannot be checkpointed: the host lets go around a pause that keeps memory.
 *
 * -K KEY_FILE -T PORT also serve the control protocol on TCP port PORT, to
 * connections that prove they know the workspace's channel key (handshake.c).
 * The key file is root's alone: init starts as root, reads it, and drops to
 * -U UID[:GID] (the workspace's user, who runs every command) before anything
 * else, non-dumpable from then on, so that no workload can read the key from
 * the file or from the helper's memory.  The TCP listener stays init's for the
 * sandbox's life (a SIGUSR1 stops serving it, never closes it), so that no
 * workload can bind the port instead. */
#define MIN_TICK_MS 25
#define MAX_TICK_MS 1000
static int listen_on(const char *path);
static pid_t start_server(int s, int t, const char *id);
static unsigned char channel_key[CHANNEL_KEY_BYTES];

/* Become UID:GID for good (groups: GID alone, as Docker gives a user named as uid:gid), with no
 * capability left to regain.  -1 (and why, on stderr) if that cannot be done: better no
 * workspace than commands run as root. */
static int drop_to(const char *spec, long *uid_out) {
    char *end;
    long uid = strtol(spec, &end, 10), gid = uid;
    if (*end == ':')
        gid = strtol(end + 1, &end, 10);
    if (*end || uid <= 0 || gid < 0) {
        fprintf(stderr, "agentbox-exec: -U %s: not UID[:GID] of a user other than root\n", spec);
        return -1;
    }
    *uid_out = uid;
    if (getuid() == (uid_t)uid && geteuid() == (uid_t)uid)
        return 0;   /* started as that user already: nothing to drop */
    /* The bounding set too, where init may (CAP_SETPCAP): nothing the workload runs could ever
     * gain a capability back, with or without no-new-privileges. */
    for (int cap = 0; cap < 64; cap++)
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL && errno != EPERM)
            break;
    gid_t group = (gid_t)gid;
    if (setgroups(1, &group) < 0 || setgid(group) < 0 || setuid((uid_t)uid) < 0) {
        fprintf(stderr, "agentbox-exec: cannot become user %s: %s\n", spec, strerror(errno));
        return -1;
    }
    if (setuid(0) == 0 || getuid() != (uid_t)uid || geteuid() != (uid_t)uid) {
        fprintf(stderr, "agentbox-exec: still able to become root after dropping to %s\n", spec);
        return -1;
    }
    return 0;
}

static int cmd_init(int argc, char **argv) {
    long long max_memory = 0;
    long tcp_port = 0, workload = -1;
    const char *socket_path = NULL, *workspace_id = "", *key_path = NULL, *user = NULL;
    for (int i = 1; i < argc; i += 2) {
        if (i + 1 >= argc)
            return usage();
        if (!strcmp(argv[i], "-M"))
            max_memory = atoll(argv[i + 1]);
        else if (!strcmp(argv[i], "-S"))
            socket_path = argv[i + 1];
        else if (!strcmp(argv[i], "-I"))
            workspace_id = argv[i + 1];
        else if (!strcmp(argv[i], "-K"))
            key_path = argv[i + 1];
        else if (!strcmp(argv[i], "-T"))
            tcp_port = strtol(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "-U"))
            user = argv[i + 1];
        else if (strcmp(argv[i], "-P"))
            return usage();
    }
    if (tcp_port < 0 || tcp_port > 65535)
        return usage();
    /* The key is read first, while init is still root (who alone may read it), then init becomes
     * the workspace's user: nothing runs as root past these lines. */
    if (user)
        workload = strtol(user, NULL, 10);   /* checked by drop_to */
    else if (getuid() != 0)
        workload = (long)getuid();   /* init's own user runs the commands */
    int have_key = tcp_port > 0 && key_path && load_channel_key(key_path, workload, channel_key) == 0;
    if (user && drop_to(user, &workload) < 0)
        return 1;
    if (have_key)
        prctl(PR_SET_DUMPABLE, 0);   /* no ptrace, no /proc/<pid>/mem of init, its server or its workers */
    else if (tcp_port > 0 && !key_path)
        fputs("agentbox-exec: no TCP channel: -T without -K (no key to check connections with)\n", stderr);
    sigset_t set = term_and_chld();
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGUSR2);
    sigprocmask(SIG_BLOCK, &set, NULL);
    procs_mark_stopped();   /* background processes of an earlier boot ended with it */
    /* Listening before the ready line, so that the socket is there as soon as the host
     * may use it; the server and its workers inherit it, and a new server takes it over. */
    int listener = socket_path ? listen_on(socket_path) : -1;
    int tcp = have_key ? listen_tcp((int)tcp_port) : -1;
    if (tcp >= 0)
        announce_address();
    pid_t server = listener >= 0 || tcp >= 0 ? start_server(listener, tcp, workspace_id) : -1;
    /* The host waits for this line: proof that code runs in the sandbox. */
    fputs(READY_LINE "\n", stdout);
    fflush(stdout);
    int cooldown = 0;
    long long next_check = now_ns();
    for (;;) {
        pid_t gone;
        int status;
        while ((gone = waitpid(-1, &status, WNOHANG)) > 0) {
            /* SIGCHLDs coalesce: reap everything on each wake-up.  The control server
             * comes back if something killed it. */
            if (gone == server)
                server = listener >= 0 || tcp >= 0 ? start_server(listener, tcp, workspace_id) : -1;
        }
        long long wait = next_check - now_ns();
        struct timespec tick = {0, wait > 0 ? wait : 0};
        int sig = max_memory > 0 ? sigtimedwait(&set, NULL, &tick) : sigwaitinfo(&set, NULL);
        if (sig == SIGTERM || sig == SIGINT)
            return 128 + sig;   /* ended by a signal: the engine restarts an on-failure workspace after its own restart */
        if (sig == SIGUSR1 && server > 0) {
            if (kill(server, SIGTERM) == 0)
                while (waitpid(server, NULL, 0) < 0 && errno == EINTR)
                    ;   /* it ends once every worker has, so nothing holds the socket after */
            server = -1;
            if (listener >= 0) {
                close(listener);
                listener = -1;
                unlink(socket_path);   /* the host's sign that nothing holds it */
            }
        } else if (sig == SIGUSR2 && server < 0) {
            if (listener < 0 && socket_path)
                listener = listen_on(socket_path);
            server = listener >= 0 || tcp >= 0 ? start_server(listener, tcp, workspace_id) : -1;
        }
        if (max_memory <= 0 || now_ns() < next_check)
            continue;   /* on the clock, not on every exit: SIGCHLDs may never stop */
        next_check = now_ns() + MIN_TICK_MS * 1000000LL;
        if (cooldown > 0) {   /* let the last victim's memory go before judging again */
            cooldown--;
            continue;
        }
        long long used = sandbox_memory_used(), rss;
        if (used <= max_memory) {
            /* Each check costs ~1 ms of CPU under ptrace: look again only as soon as the
             * workload could have used up the room left, at 2 GiB/s (3x what gVisor's
             * ptrace platform manages, measured), so an idle workspace costs ~0.1% CPU. */
            long long ms = (max_memory - (used > 0 ? used : 0)) / (2LL << 20);
            ms = ms < MIN_TICK_MS ? MIN_TICK_MS : ms > MAX_TICK_MS ? MAX_TICK_MS : ms;
            next_check = now_ns() + ms * 1000000LL;
            continue;
        }
        pid_t victim = largest_process(&rss);
        if (victim > 0 && kill(victim, SIGKILL) == 0) {
            fprintf(stderr, "agentbox-exec: memory limit of %lld bytes exceeded (%lld in use): "
                    "killed pid %d (%lld kB resident)\n", max_memory, used, (int)victim, rss * 4);
            cooldown = 10;
        }
    }
}

/* ---- run ------------------------------------------------------------------ */

static volatile sig_atomic_t got_chld, got_sig;
static void on_chld(int sig) { (void)sig; got_chld = 1; }
static void on_term(int sig) { got_sig = sig; }

struct stream {
    int fd;                    /* pipe read end, -1 once at EOF */
    int out;                   /* our fd it is forwarded to */
    unsigned long long sent;   /* bytes forwarded so far */
};

static pid_t child = -1;       /* also the id of the child's process group */
static int child_reaped;
#define DEFAULT_MAX_BYTES 10485760ULL
static unsigned long long max_bytes = DEFAULT_MAX_BYTES;

/* SIGKILL the command's whole process group and reap the command.  Once is
 * not enough under gVisor: a member that is inside fork() when the signal
 * lands can still bring a child into the group that never saw it (Linux fails
 * such a fork; runsc does not), and the members of a fork bomb are always
 * inside fork().  So: again, every millisecond, until the group is empty or
 * 10 s have passed.  `run` is the command's subreaper, so the dead members are
 * its own to reap here: a zombie still counts as a member. */
static void kill_group(void) {
    long long give_up = now_ns() + 10 * NSEC;
    struct timespec pause = {0, 1000000};
    for (;;) {
        pid_t reaped;
        while ((reaped = waitpid(-1, NULL, WNOHANG)) > 0)
            if (reaped == child)
                child_reaped = 1;
        if (kill(-child, SIGKILL) != 0 || now_ns() >= give_up)
            break;
        nanosleep(&pause, NULL);
    }
    if (!child_reaped)
        waitpid(child, NULL, 0);
    child_reaped = 1;
}

/* Read once from a stream and forward it while under max_bytes+1 in total;
 * the rest is read and dropped so the child never blocks on a full pipe.
 * Returns read()'s result (errno intact when negative). */
static ssize_t pump(struct stream *s) {
    char buf[BUFSZ];
    ssize_t n = read(s->fd, buf, sizeof buf);
    if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) {
        int e = errno;   /* EOF, or an error that won't go away */
        close(s->fd);
        s->fd = -1;
        errno = e;
    }
    if (n <= 0)
        return n;
    unsigned long long room = max_bytes + 1 - s->sent;
    size_t len = (unsigned long long)n < room ? (size_t)n : (size_t)room;
    if (len > 0 && emit(s->out, buf, len) < 0) {
        if (errno == EPIPE || errno == ECONNRESET) {   /* the host went away: stop the work */
            kill_group();
            _exit(141);
        }
        len = room;   /* other write errors: stop forwarding, keep draining */
    }
    s->sent += len;
    return n;
}

/* Sleep until a pipe is readable, a signal arrives (ppoll unblocks `mask`
 * atomically) or the timeout passes; then pump what is readable. */
static void poll_streams(struct stream *ss, const struct timespec *tp, const sigset_t *mask) {
    struct pollfd p[2] = {{.fd = ss[0].fd, .events = POLLIN},
                          {.fd = ss[1].fd, .events = POLLIN}};
    if (ppoll(p, 2, tp, mask) < 0)
        return;   /* EINTR: a handler set a flag */
    for (int i = 0; i < 2; i++)
        if (p[i].fd >= 0 && p[i].revents)
            pump(&ss[i]);
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

/* A background process started by the command still holds the pipes.  A
 * detached process keeps reading (and dropping) until EOF, so that process
 * never gets EPIPE/SIGPIPE, while we return to the host right away. */
static int keep_worker;   /* the call leaves nothing behind, so its worker may serve another */

static void spawn_drainer(struct stream *ss) {
    keep_worker = 0;
    pid_t pid = fork();
    if (pid < 0)
        perror("agentbox-exec: fork drainer");
    if (pid != 0)
        return;
    setsid();
    int devnull = open("/dev/null", O_RDWR);
    for (int fd = 0; fd < 3; fd++)
        dup2(devnull, fd);
    close_other_fds(ss[0].fd, ss[1].fd, -1);   /* the control connection too */
    frame_fd = -1;
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    ss[0].sent = ss[1].sent = max_bytes + 1;   /* forward nothing more */
    while (ss[0].fd >= 0 || ss[1].fd >= 0)
        poll_streams(ss, NULL, &none);
    _exit(0);
}

/* The child is gone: forward what is already in the pipes, hand them to a
 * drainer if someone still holds the write ends, and exit with `code`. */
static void finish(struct stream *ss, int code) {
    for (int i = 0; i < 2; i++) {
        if (ss[i].fd < 0)
            continue;
        fcntl(ss[i].fd, F_SETFL, fcntl(ss[i].fd, F_GETFL) | O_NONBLOCK);
        /* At most one pipe's worth: a background process that writes
         * nonstop must not keep us here. */
        long left = fcntl(ss[i].fd, F_GETPIPE_SZ);
        if (left <= 0)
            left = 1L << 20;
        while (ss[i].fd >= 0 && left > 0) {
            ssize_t n = pump(&ss[i]);
            if (n < 0 && errno != EINTR)
                break;   /* EAGAIN: empty, but a writer is still alive */
            left -= n > 0 ? n : 0;
        }
    }
    if (ss[0].fd >= 0 || ss[1].fd >= 0)
        spawn_drainer(ss);
    leave(code);
}

/* Returns the index of ARGV[0] in argv, or -1 on bad flags. */
static int parse_run_flags(int argc, char **argv, double *timeout, int *interactive) {
    int opt;
    char *end;
    optind = 1;
    while ((opt = getopt(argc, argv, "+t:m:i")) != -1) {
        errno = 0;
        if (opt == 't') {
            *timeout = strtod(optarg, &end);
            /* !(x > 0) also rejects NaN; the upper bound rejects inf. */
            if (errno || end == optarg || *end || !(*timeout > 0) || *timeout > 1e9)
                return -1;
        } else if (opt == 'm') {
            max_bytes = strtoull(optarg, &end, 10);
            if (errno || end == optarg || *end || *optarg == '-' || max_bytes > (1ULL << 62))
                return -1;
        } else if (opt == 'i') {
            *interactive = 1;
        } else {
            return -1;
        }
    }
    return optind < argc ? optind : -1;
}

/* In the forked child: set up the session, signals and fds, then exec.  On
 * failure, errno goes to the parent through the CLOEXEC pipe `ep`. */
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

static void exec_child(const char *file, char **cmd, int interactive, int out, int err, int ep, sigset_t *mask) {
    setsid();   /* own session and process group, so a timeout kills it all */
    apply_task_limit();
    signal(SIGPIPE, SIG_DFL);
    signal(SIGCHLD, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    sigprocmask(SIG_SETMASK, mask, NULL);
    if (!interactive) {
        int null = open("/dev/null", O_RDONLY);
        if (null < 0)
            close(0);   /* still better than handing over our stdin */
        else if (dup2(null, 0) == 0)
            close(null);
    }
    dup2(out, 1);   /* dup2 clears CLOEXEC on the copy */
    dup2(err, 2);
    execvp(file, cmd);   /* argv[0] stays as the caller wrote it */
    int e = errno;
    ssize_t w = write(ep, &e, sizeof e);
    (void)w;
    _exit(127);
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

static int cmd_run(int argc, char **argv) {
    double timeout = 0;
    static int interactive;   /* static: vfork() below must not clobber it */
    interactive = 0;          /* a worker runs one call after another */
    max_bytes = DEFAULT_MAX_BYTES;
    got_chld = got_sig = 0;
    child = -1;
    child_reaped = 0;
    int first = parse_run_flags(argc, argv, &timeout, &interactive);
    if (first < 0)
        return usage();
    char **cmd = argv + first;
    long long deadline = now_ns() + (long long)(timeout * NSEC);

    /* SIGPIPE ignored: a vanished host shows up as EPIPE from write().
     * SIGCHLD/SIGTERM/SIGINT stay blocked except inside ppoll(), so none can
     * slip in between checking the flags and going to sleep. */
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_chld};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGCHLD, &sa, NULL);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigset_t block = term_and_chld(), orig;
    sigprocmask(SIG_BLOCK, &block, &orig);

    /* The command's orphans become ours while we run, so a timeout can reap them (kill_group). */
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    int out[2], err[2], ep[2];
    char path[PATH_MAX];
    const char *file = command_path(cmd[0], path, sizeof path);
    if (pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0 || pipe2(ep, O_CLOEXEC) < 0 ||
        (child = vfork()) < 0) {
        perror("agentbox-exec");
        return 126;
    }
    if (child == 0)
        exec_child(file, cmd, interactive, out[1], err[1], ep[1], &orig);
    close(out[1]);
    close(err[1]);
    close(ep[1]);

    /* Exec succeeded (setsid is done, so the group exists), or failed and the message must come from us. */
    int exec_errno = exec_result(ep[0], child);
    if (exec_errno) {
        fprintf(stderr, "agentbox-exec: cannot run '%s': %s\n", cmd[0], strerror(exec_errno));
        return exec_errno == ENOENT ? 127 : 126;
    }

    struct stream ss[2] = {{out[0], 1, 0}, {err[0], 2, 0}};
    for (;;) {
        if (got_sig) {
            kill(-child, got_sig);
            got_sig = 0;
        }
        if (got_chld) {
            got_chld = 0;
            int status;
            if (waitpid(child, &status, WNOHANG) == child) {
                child_reaped = 1;
                finish(ss, WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status));
            }
        }
        struct timespec ts, *tp = NULL;
        if (timeout > 0) {
            long long left = deadline - now_ns();
            if (left <= 0) {
                kill_group();
                finish(ss, 124);
            }
            ts.tv_sec = left / NSEC;
            ts.tv_nsec = left % NSEC;
            tp = &ts;
        }
        poll_streams(ss, tp, &orig);
    }
}

/* ---- get ------------------------------------------------------------------ */

struct entry {
    char *name;
    char type;
    long long size, mtime;
    unsigned mode;
};

static int entry_cmp(const void *a, const void *b) {
    return strcmp(((const struct entry *)a)->name, ((const struct entry *)b)->name);
}

/* Files of /proc and /sys say they are empty and are not: what one read gives, up to
 * SIZELESS_MAX bytes (theirs are small), announced with its size like any file. */
#define SIZELESS_MAX (1 << 20)

static int get_sizeless(int fd, mode_t mode) {
    char *buf = malloc(SIZELESS_MAX);
    size_t got = 0;
    ssize_t n;
    while (buf && got < SIZELESS_MAX && ((n = read(fd, buf + got, SIZELESS_MAX - got)) > 0 || (n < 0 && errno == EINTR)))
        got += n > 0 ? (size_t)n : 0;
    close(fd);
    if (!buf)
        return report_error(ENOMEM, NULL);
    printf("F %zu %o\n", got, (unsigned)(mode & 07777));
    fflush(stdout);
    int bad = got > 0 && emit(1, buf, got) < 0;
    free(buf);
    return bad;
}

static int get_file(const char *path) {
    /* O_NONBLOCK + fstat: should the path have become a FIFO since stat(),
     * we neither block in open() nor stream it. */
    int fd = open(path, O_RDONLY | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0)
        return report_error(errno, NULL);
    if (!S_ISREG(st.st_mode))
        return report_error(EINVAL, "not a regular file or directory");
    if (st.st_size == 0)
        return get_sizeless(fd, st.st_mode);
    printf("F %lld %o\n", (long long)st.st_size, (unsigned)(st.st_mode & 07777));
    fflush(stdout);

    /* Send exactly the announced size, so the framing holds even if the file
     * changes meanwhile; if it shrank (or read fails), pad with NULs and
     * exit 1 so the host discards the content. */
    char buf[BUFSZ];
    int bad = 0;
    for (long long left = st.st_size; left > 0;) {
        size_t want = left < BUFSZ ? (size_t)left : BUFSZ;
        ssize_t n = 0;
        if (!bad && (n = read(fd, buf, want)) < 0 && errno == EINTR)
            continue;
        if (!bad && n <= 0) {
            fprintf(stderr, "agentbox-exec: %s: %s\n", path,
                    n < 0 ? strerror(errno) : "file shrank while reading");
            bad = 1;
        }
        if (bad) {
            memset(buf, 0, want);
            n = (ssize_t)want;
        }
        if (emit(1, buf, (size_t)n) < 0)
            return 1;
        left -= n;
    }
    close(fd);
    return bad;
}

static int get_dir(const char *path) {
    DIR *d = opendir(path);
    if (!d)
        return report_error(errno, NULL);
    struct entry *ents = NULL;
    size_t count = 0, cap = 0;
    struct dirent *de;
    /* Collect everything first, so an error can still be reported instead
     * of a half-written listing. */
    while ((errno = 0, de = readdir(d)) != NULL) {
        struct stat st;
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..") ||
            fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
            continue;   /* the latter: removed while we list */
        if (count == cap) {
            cap = cap ? cap * 2 : 64;
            if (!(ents = realloc(ents, cap * sizeof *ents)))
                return report_error(ENOMEM, NULL);
        }
        struct entry *e = &ents[count++];
        if (!(e->name = strdup(de->d_name)))
            return report_error(ENOMEM, NULL);
        e->type = S_ISREG(st.st_mode) ? 'f' : S_ISDIR(st.st_mode) ? 'd'
                : S_ISLNK(st.st_mode) ? 'l' : 'o';
        e->size = (long long)st.st_size;
        e->mode = (unsigned)(st.st_mode & 07777);
        e->mtime = (long long)st.st_mtim.tv_sec;
    }
    if (errno)
        return report_error(errno, NULL);
    closedir(d);
    if (count)
        qsort(ents, count, sizeof *ents, entry_cmp);
    fputs("D\n", stdout);
    for (size_t i = 0; i < count; i++) {
        struct entry *e = &ents[i];
        printf("%c %lld %o %lld %s", e->type, e->size, e->mode, e->mtime, e->name);
        putchar('\0');   /* names may contain anything but '/' and NUL */
    }
    return flush_stdout();
}

static int cmd_get(int argc, char **argv) {
    struct stat st;
    if (argc != 2)
        return usage();
    if (stat(argv[1], &st) < 0)
        return report_error(errno, NULL);
    if (S_ISDIR(st.st_mode))
        return get_dir(argv[1]);
    if (S_ISREG(st.st_mode))
        return get_file(argv[1]);
    return report_error(EINVAL, "not a regular file or directory");   /* never open a FIFO */
}

/* ---- put / mkdir ---------------------------------------------------------- */

/* Copy stdin into fd; returns 0 or errno. */
static int copy_stdin(int fd, unsigned long long *total) {
    char buf[BUFSZ];
    for (;;) {
        ssize_t n = read(0, buf, sizeof buf);
        if (n == 0)
            return 0;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 || write_all(fd, buf, (size_t)n) < 0)
            return errno;
        *total += (unsigned long long)n;
    }
}

static int cmd_put(int argc, char **argv) {
    const char *path = NULL;
    unsigned long mode = 0644;
    long long expected = -1;   /* -s: commit only if exactly this many bytes arrived */
    int opts = 1;   /* "--" ends options, for paths starting with '-' */
    for (int i = 1; i < argc; i++) {
        if (opts && !strcmp(argv[i], "--")) {
            opts = 0;
        } else if (opts && !strcmp(argv[i], "-p") && i + 1 < argc) {
            char *end, *arg = argv[++i];
            errno = 0;
            mode = strtoul(arg, &end, 8);
            if (errno || end == arg || *end || *arg == '-' || mode > 07777)
                return usage();
        } else if (opts && !strcmp(argv[i], "-s") && i + 1 < argc) {
            char *end, *arg = argv[++i];
            errno = 0;
            expected = strtoll(arg, &end, 10);
            if (errno || end == arg || *end || expected < 0)
                return usage();
        } else if (!path && *argv[i] && (!opts || *argv[i] != '-')) {
            path = argv[i];
        } else {
            return usage();
        }
    }
    if (!path)
        return usage();
    signal(SIGXFSZ, SIG_IGN);   /* past RLIMIT_FSIZE: report EFBIG, don't die */

    struct stat st;
    if (path[strlen(path) - 1] == '/' || (stat(path, &st) == 0 && S_ISDIR(st.st_mode)))
        return report_error(EISDIR, NULL);

    /* The temp file lives next to PATH, so that rename() is atomic. */
    const char *slash = strrchr(path, '/');
    char *dir = slash == path ? strdup("/")
              : slash ? strndup(path, (size_t)(slash - path)) : strdup(".");
    char *tmp = dir ? malloc(strlen(dir) + sizeof "/.agentbox-put.XXXXXX") : NULL;
    if (!tmp)
        return report_error(ENOMEM, NULL);
    int e = mkdir_p(dir);
    if (e)
        return report_error(e, NULL);
    sprintf(tmp, "%s/.agentbox-put.XXXXXX", dir);
    int fd = mkstemp(tmp);
    if (fd < 0)
        return report_error(errno, NULL);

    unsigned long long total = 0;
    e = copy_stdin(fd, &total);
    /* An upload cut short looks like EOF on stdin: without the announced size
     * it would be committed as if complete. */
    int short_upload = !e && expected >= 0 && total != (unsigned long long)expected;
    if (short_upload)
        e = EIO;
    if (!e && fchmod(fd, (mode_t)mode) < 0)
        e = errno;
    if (close(fd) < 0 && !e)   /* some filesystems report ENOSPC only here */
        e = errno;
    if (!e && rename(tmp, path) < 0)
        e = errno;
    if (e) {
        unlink(tmp);
        return report_error(e, short_upload ? "upload incomplete: fewer or more bytes than announced" : NULL);
    }
    printf("OK %llu\n", total);
    return flush_stdout();
}

static int cmd_mkdir(int argc, char **argv) {
    if (argc != 2 || !*argv[1])
        return usage();
    int e = mkdir_p(argv[1]);
    if (e)
        return report_error(e, NULL);
    fputs("OK\n", stdout);
    return flush_stdout();
}

static int cmd_probe(int argc, char **argv) {
    struct utsname u;
    (void)argv;
    if (argc != 1)
        return usage();
    if (uname(&u) < 0)
        return report_error(errno, NULL);
    printf("agentbox-exec ok\n%s\n", u.release);
    return flush_stdout();
}

/* ---- serve: the control socket --------------------------------------------
 *
 * init keeps a server on a Unix socket in a directory bind-mounted from the
 * host, so the host reaches the helper without `docker exec` (and without any
 * network: it works with "network": "none").  Per connection:
 *
 *   helper -> host   "AGX1 <workspace id>\n" first, so that the host can check
 *                    whom it reached before it sends anything
 *   host -> helper   u32 length (big-endian), then that many bytes of
 *                    NUL-terminated fields: cwd, the number of env entries,
 *                    the "K=V" entries, then the helper's own argv ("run" ...)
 *   host -> helper   stdin, raw, until the host shuts down its sending side
 *   helper -> host   frames: u8 kind, u32 length (big-endian), data; kinds
 *                    1 stdout, 2 stderr, 3 exit (data: i32 exit code, last),
 *                    4 the request could not be started (data: why, last)
 *
 * The subcommand runs in the process that accepted the connection, with the
 * socket as its stdin and its output framed (emit, and stdio through
 * framed_stream), so it behaves exactly as under `docker exec`.  That process
 * (a worker) was forked before the connection came, and serves the next call
 * when this one leaves nothing behind: a fork costs 5-8 ms under gVisor.
 *
 * On the TCP listener (-T), the same, after the handshake of handshake.c: a
 * connection that does not prove it knows the channel key is closed before
 * the hello, and its worker waits for the next one. */
#define MAX_REQUEST (64 << 20)

static int dispatch(int argc, char **argv);

static ssize_t framed_write(void *stream, const char *buf, size_t size) {
    return emit((int)(intptr_t)stream, buf, size) < 0 ? -1 : (ssize_t)size;
}

static FILE *framed_stream(int stream) {
    cookie_io_functions_t io = {.write = framed_write};
    FILE *f = fopencookie((void *)(intptr_t)stream, "w", io);
    if (f)
        setvbuf(f, NULL, _IOFBF, BUFSZ);
    return f;
}

int read_exactly(int fd, char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = read(fd, buf, len);
        if (n == 0 || (n < 0 && errno != EINTR))
            return -1;
        if (n > 0) {
            buf += n;
            len -= (size_t)n;
        }
    }
    return 0;
}

static int refuse(int c, const char *what, const char *detail) {
    char msg[4200];
    int n = snprintf(msg, sizeof msg, "%s: %s", what, detail);
    send_frame(c, 4, msg, n < 0 ? 0 : (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1);
    return 1;
}

/* The request of the call being served; freed when the worker goes back to waiting. */
static char *request;
static char **fields;

/* Subcommands that leave nothing in the worker once they end (`run` unless it had to hand
 * its pipes to a drainer; not `spawn`, whose supervisor it forks): their worker may serve the
 * next call. */
static int reusable(const char *name) {
    static const char *const names[] = {"run", "get", "put", "mkdir", "probe", "connect",
                                        "procs", "output", "input", "signal"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(name, names[i]))
            return 1;
    return 0;
}

/* Serve one accepted connection `c` (close-on-exec): through leave() back into the worker's
 * sigsetjmp, or a return when the request was refused or the connection broke. */
static int serve_one(int c, const char *id) {
    char hello[300];
    int n = snprintf(hello, sizeof hello, "AGX1 %s\n", id);
    if (write_all(c, hello, (size_t)n) < 0)
        return 1;
    unsigned char head[4];
    if (read_exactly(c, (char *)head, 4) < 0)
        return 1;
    size_t len = (size_t)head[0] << 24 | (size_t)head[1] << 16 | (size_t)head[2] << 8 | head[3];
    char *req = request = len <= MAX_REQUEST ? malloc(len + 1) : NULL;
    if (!req)
        return refuse(c, "request", "too large");
    if (read_exactly(c, req, len) < 0)
        return 1;
    req[len] = '\0';
    /* Split into fields; every field ends with a NUL. */
    size_t count = 0;
    for (size_t i = 0; i < len; i++)
        count += req[i] == '\0';
    fields = calloc(count + 1, sizeof *fields);
    if (!fields || count < 3)
        return refuse(c, "request", "malformed");
    for (size_t i = 0, f = 0; f < count; i += strlen(req + i) + 1)
        fields[f++] = req + i;
    size_t envs = strtoul(fields[1], NULL, 10);
    if (envs > count - 3)
        return refuse(c, "request", "malformed");
    if (*fields[0] && chdir(fields[0]) < 0) {
        char what[4200];
        snprintf(what, sizeof what, "chdir %s", fields[0]);   /* the host reads "chdir" as a bad cwd */
        return refuse(c, what, strerror(errno));
    }
    for (size_t i = 0; i < envs; i++)
        putenv(fields[2 + i]);
    if (dup2(c, 0) < 0 || !(stdout = framed_stream(1)) || !(stderr = framed_stream(2)))
        return refuse(c, "starting the helper", strerror(errno));
    frame_fd = c;
    signal(SIGPIPE, SIG_DFL);
    signal(SIGCHLD, SIG_DFL);
    keep_worker = reusable(fields[2 + envs]);
    leave(dispatch((int)(count - 2 - envs), fields + 2 + envs));
    return 0;
}

/* Touch, before any call, the memory a call will write: in a fresh fork every page is
 * shared copy-on-write, and under gVisor each first write costs a fault handled by the
 * sentry.  Stack, heap (kept by malloc for reuse) and stdio's buffers. */
static void warm_up(void) {
    volatile char stack[256 << 10];
    for (size_t i = 0; i < sizeof stack; i += 4096)
        stack[i] = 0;
    char *heap = malloc(BUFSZ * 2);
    if (heap) {
        memset(heap, 0, BUFSZ * 2);
        free(heap);
    }
    fflush(stdout);
}

/* The listeners a worker accepts calls on: the Unix socket (-S) and the TCP port (-T), -1 if none. */
static int unix_listener = -1, tcp_listener = -1;

/* What a call may have changed in its worker, put back: the worker is then as it was
 * before the call (cwd, environment, stdio, signals, fds; zombies reaped). */
static void after_call(int server, const char *cwd, char **env, FILE *out, FILE *err) {
    if (stdout != out) {   /* the framed streams, flushed by leave() */
        fclose(stdout);
        stdout = out;
    }
    if (stderr != err) {
        fclose(stderr);
        stderr = err;
    }
    frame_fd = -1;
    clearenv();   /* before the request goes: the call's variables point into it */
    for (char **e = env; *e; e++)
        putenv(*e);
    free(request);
    free(fields);
    request = NULL;
    fields = NULL;
    if (chdir(cwd) < 0) { /* gone: the next call says so if it needs it */ }
    int null = open("/dev/null", O_RDONLY);
    if (null >= 0 && dup2(null, 0) == 0)
        close(null);
    close_other_fds(unix_listener, tcp_listener, server);   /* the connection, and whatever the call left open */
    prctl(PR_SET_CHILD_SUBREAPER, 0);
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGPIPE, SIG_IGN);
    while (waitpid(-1, NULL, WNOHANG) > 0)
        ;
    signal(SIGCHLD, SIG_IGN);   /* orphans the call left us are reaped as they end */
    optind = 1;
}

/* Calls one worker serves at most: whatever a call leaks stays bounded. */
#define WORKER_CALLS 1000

/* The next connection on either listener (both non-blocking: the workers wait on them
 * together, and the one that loses a race waits again); *tcp says which. */
static int accept_call(int *tcp) {
    struct pollfd p[2] = {{.fd = unix_listener, .events = POLLIN}, {.fd = tcp_listener, .events = POLLIN}};
    for (;;) {
        if (poll(p, 2, -1) < 0) {
            if (errno != EINTR)
                usleep(10000);
            continue;
        }
        for (int i = 0; i < 2; i++) {
            if (p[i].fd < 0 || !p[i].revents)
                continue;
            int c = accept4(p[i].fd, NULL, NULL, SOCK_CLOEXEC);
            if (c >= 0) {
                *tcp = i == 1;
                return c;
            }
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED)
                usleep(10000);   /* EMFILE and the like: do not spin */
        }
    }
}

/* A worker: waits for a connection, tells the server ('t') and serves it.  After a call
 * that leaves nothing behind it asks the server ('f') whether to wait for another ('k')
 * or end; otherwise it ends, and the server makes another when it needs one.  Serving
 * calls one after another without a fork matters under gVisor, where a fork costs 5-8 ms of
 * the sandbox's CPU and slows the call that runs meanwhile.  A TCP connection is first
 * authenticated ('h' while it is, 'r' when refused: the worker then waits again). */
static void worker(const char *id, int server, pid_t server_pid) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);   /* no idle worker outlives its server, which init replaces */
    if (getppid() != server_pid)
        _exit(0);   /* it died before the line above: no signal will come */
    close_other_fds(unix_listener, tcp_listener, server);   /* the server's ends of the other workers' sockets */
    warm_up();
    char cwd[PATH_MAX];
    size_t count = 0;
    while (environ && environ[count])
        count++;
    char **env = calloc(count + 1, sizeof *env);
    if (!getcwd(cwd, sizeof cwd) || !env)
        _exit(1);
    memcpy(env, environ, count * sizeof *env);   /* the strings stay: they are init's */
    FILE *out = stdout, *err = stderr;
    worker_pid = getpid();
    for (int calls = 1;; calls++) {
        int tcp;
        int c = accept_call(&tcp);
        if (tcp) {
            if (write(server, "h", 1) < 0) { /* the server is gone: PDEATHSIG ends us */ }
            if (handshake(c, channel_key, id) < 0) {
                close(c);   /* unread: not a byte of what it sent past its proof */
                calls--;
                if (write(server, "r", 1) < 0) { /* as above */ }
                continue;
            }
        }
        prctl(PR_SET_PDEATHSIG, 0);   /* a call under way finishes whatever happens to the server */
        if (write(server, "t", 1) < 0) { /* the server is gone: serve anyway */ }
        sigjmp_buf done;
        if (sigsetjmp(done, 1) == 0) {
            call_done = &done;
            keep_worker = 1;
            serve_one(c, id);   /* returns only when the call was refused or its connection broke */
        }
        call_done = NULL;
        char verdict = 0;
        if (!keep_worker || calls >= WORKER_CALLS || write(server, "f", 1) != 1 || read(server, &verdict, 1) != 1 ||
            verdict != 'k')
            _exit(0);
        after_call(server, cwd, env, out, err);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != server_pid)
            _exit(0);
    }
}

/* The control socket, listening; -1 (and why, on stderr) if it cannot be made. */
static int listen_on(const char *path) {
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);   /* no command inherits it */
    if (s < 0 || strlen(path) >= sizeof addr.sun_path) {
        fprintf(stderr, "agentbox-exec: no control socket at %s\n", path);
        return -1;
    }
    strcpy(addr.sun_path, path);
    unlink(path);
    if (bind(s, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(s, 128) < 0) {
        /* Under runsc this needs --host-uds=create; the host then uses docker exec. */
        fprintf(stderr, "agentbox-exec: no control socket at %s: %s\n", path, strerror(errno));
        close(s);
        return -1;
    }
    return s;
}

/* The control server on listening sockets `s` (Unix) and `t` (TCP), either -1.  It keeps SPARES
 * workers waiting.  When one takes a call, the replacement is made only after REFILL_MS (at once
 * when none is left): the call usually ends before, and its worker waits again, so that calls one
 * after another cost no fork at all.  Workers in a TCP handshake are not waiting, but past
 * MAX_HANDSHAKES of them no replacement is made until one ends: connections that never prove
 * anything cost the sandbox a bounded number of processes, for HANDSHAKE_MS at most each. */
#define SPARES 2
#define REFILL_MS 100
#define MAX_WORKERS 1024
#define MAX_HANDSHAKES 8

enum { IDLE, HANDSHAKE, BUSY, ENDING };

static volatile sig_atomic_t server_ending;

static void on_server_term(int sig) {
    (void)sig;
    server_ending = 1;
}

static pid_t start_server(int s, int t, const char *id) {
    pid_t init = getpid();
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    /* Ends with init: in a container that is the container's end anyway, but init may run
     * elsewhere (the unit tests run it on the host), and its workers end with it in turn. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != init)
        _exit(0);
    /* SIGTERM (init letting go of the socket) is taken only inside ppoll(). */
    sigset_t none, term;
    sigemptyset(&none);
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    struct sigaction sa = {.sa_handler = on_server_term};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigprocmask(SIG_SETMASK, &term, NULL);
    signal(SIGCHLD, SIG_IGN);   /* workers reap themselves */
    signal(SIGPIPE, SIG_IGN);
    static struct pollfd workers[MAX_WORKERS];
    static int state[MAX_WORKERS];
    static pid_t pids[MAX_WORKERS];
    pid_t self = getpid();
    int count = 0, idle = 0, handshakes = 0;
    long long refill_at = 0;
    unix_listener = s;
    tcp_listener = t;
    if (s >= 0)   /* workers poll both listeners: a lost race must not block in accept */
        fcntl(s, F_SETFL, fcntl(s, F_GETFL) | O_NONBLOCK);
    for (;;) {
        if (server_ending) {
            /* Busy workers too: a call under way ends with the socket.  With SIGCHLD ignored,
             * wait() returns only once every child is gone. */
            for (int i = 0; i < count; i++)
                kill(pids[i], SIGKILL);
            while (wait(NULL) >= 0 || errno == EINTR)
                ;
            _exit(0);
        }
        while (idle < SPARES && count < MAX_WORKERS && handshakes < MAX_HANDSHAKES &&
               (idle == 0 || now_ns() >= refill_at)) {
            int pair[2];
            pid_t w = socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) < 0 ? -1 : fork();
            if (w == 0) {
                close(pair[0]);
                signal(SIGTERM, SIG_DFL);
                sigprocmask(SIG_SETMASK, &none, NULL);
                worker(id, pair[1], self);
            }
            if (w < 0) {
                sleep(1);   /* out of processes: the workload's task limit; try again */
                continue;
            }
            close(pair[1]);
            workers[count] = (struct pollfd){.fd = pair[0], .events = POLLIN};
            pids[count] = w;
            state[count++] = IDLE;
            idle++;
        }
        long long wait_ns = idle < SPARES ? refill_at - now_ns() + 1000000 : -1;
        struct timespec wait = {wait_ns / NSEC, wait_ns % NSEC};
        if (ppoll(workers, (nfds_t)count, wait_ns >= 0 ? &wait : NULL, &none) <= 0)
            continue;
        for (int i = 0; i < count; i++) {
            if (!workers[i].revents)
                continue;
            char said;
            ssize_t n = read(workers[i].fd, &said, 1);
            if (n < 0 && errno == EINTR)
                continue;
            if (n == 1 && said == 'h') {
                idle -= state[i] == IDLE;
                handshakes += state[i] != HANDSHAKE;
                state[i] = HANDSHAKE;
            } else if (n == 1 && said == 'r') {
                handshakes -= state[i] == HANDSHAKE;
                idle += state[i] != IDLE;
                state[i] = IDLE;
            } else if (n == 1 && said == 't') {
                idle -= state[i] == IDLE;
                handshakes -= state[i] == HANDSHAKE;
                state[i] = BUSY;
                refill_at = now_ns() + REFILL_MS * 1000000LL;
            } else if (n == 1 && said == 'f') {
                int keep = idle < SPARES;   /* enough are waiting: this one ends */
                state[i] = keep ? IDLE : ENDING;
                idle += keep;
                if (write(workers[i].fd, keep ? "k" : "x", 1) < 0) { /* it died: EOF follows */ }
            } else {   /* EOF: it ended, or something killed it */
                idle -= state[i] == IDLE;
                handshakes -= state[i] == HANDSHAKE;
                close(workers[i].fd);
                workers[i] = workers[--count];
                pids[i] = pids[count];
                state[i] = state[count];
                i--;
            }
        }
    }
}

int main(int argc, char **argv) {
    /* Make sure fds 0-2 are open, so no pipe or file of ours lands on them
     * (e.g. dup2(1, 1) in the child would leave O_CLOEXEC set). */
    int fd;
    while ((fd = open("/dev/null", O_RDWR)) >= 0 && fd < 3)
        ;
    if (fd > 2)
        close(fd);

    if (argc >= 2 && !strcmp(argv[1], "init"))
        return cmd_init(argc - 1, argv + 1);
    if (getenv("AGENTBOX_TEXT")) {
        cookie_io_functions_t io = {.write = base64_write};
        FILE *text = fopencookie(NULL, "w", io);
        if (text) {
            setvbuf(text, NULL, _IOFBF, BUFSZ);
            stdout = text;
            text_out = 1;
        }
    }
    return argc >= 2 ? dispatch(argc - 1, argv + 1) : usage();
}

/* A subcommand, argv[0] its name: from the command line or the control socket. */
static int dispatch(int argc, char **argv) {
    static const struct { const char *name; int (*fn)(int, char **); } cmds[] = {
        {"run", cmd_run}, {"get", cmd_get}, {"put", cmd_put}, {"mkdir", cmd_mkdir}, {"probe", cmd_probe},
        {"spawn", cmd_spawn}, {"procs", cmd_procs}, {"output", cmd_output}, {"signal", cmd_signal},
        {"input", cmd_input}, {"watch", cmd_watch}, {"connect", cmd_connect},
    };
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        if (!strcmp(argv[0], cmds[i].name))
            return cmds[i].fn(argc, argv);
    return usage();
}
