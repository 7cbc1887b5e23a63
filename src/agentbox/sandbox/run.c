/*
 * run [-t SECONDS] [-m MAX_BYTES] [-i] -- ARGV: a command in the foreground, in a session and
 * process group of its own.  Its stdout and stderr are forwarded as they come, at most MAX_BYTES+1
 * of each; at the deadline (exit 124), or when the host goes away, its whole group is killed.  When
 * it ends, a background process that still holds its pipes gets them drained by a detached process.
 */

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helper.h"

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

/* A background process started by the command still holds the pipes.  A
 * detached process keeps reading (and dropping) until EOF, so that process
 * never gets EPIPE/SIGPIPE, while we return to the host right away. */

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

int cmd_run(int argc, char **argv) {
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
