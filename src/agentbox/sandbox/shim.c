/*
 * The supervisor ("shim") of one background process, forked by `spawn` (processes.c).  It leaves
 * the call's session, starts the command in a session of its own on pipes or a terminal, appends
 * its output to the process's log segments (out.<N>, processes.c tells their format), passes it
 * stdin, its end and terminal sizes from its abstract socket (process_io.c is the other end), and
 * records how it ended (exit).
 */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "helper.h"
#include "processes.h"

struct shim {
    char dir[128];
    int pty;
    int out[2];                /* read ends of stdout and stderr (or the terminal, and -1) */
    int in;                    /* where stdin goes (pipe or terminal), -1 when none or closed */
    int listener, client;
    char pending[BUFSZ];       /* stdin from the client not yet written */
    size_t npending, sent;
    int log;                   /* the segment being written */
    long long pos, log_size;   /* output bytes so far; the segment file's size */
    long long starts[MAX_SEGMENTS];
    int nstarts;
    long long deadline;        /* CLOCK_MONOTONIC ns at which the group is killed; 0: none */
    int timed_out;
};

static volatile sig_atomic_t shim_chld;
static void shim_on_chld(int sig) { (void)sig; shim_chld = 1; }

static void segment_path(const struct shim *s, long long start, char *path, size_t size) {
    snprintf(path, size, "%s/out.%020lld", s->dir, start);
}

static void open_segment(struct shim *s) {
    char path[192];
    if (s->log >= 0)
        close(s->log);
    if (s->nstarts == MAX_SEGMENTS) {
        segment_path(s, s->starts[0], path, sizeof path);
        unlink(path);
        memmove(s->starts, s->starts + 1, sizeof s->starts[0] * (size_t)--s->nstarts);
    }
    segment_path(s, s->pos, path, sizeof path);
    s->log = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
    s->log_size = 0;
    s->starts[s->nstarts++] = s->pos;
    /* Keep at least KEEP_BYTES: the oldest segment goes once the newer ones hold that much. */
    while (s->nstarts > 1 && s->pos - s->starts[1] >= KEEP_BYTES) {
        segment_path(s, s->starts[0], path, sizeof path);
        unlink(path);
        memmove(s->starts, s->starts + 1, sizeof s->starts[0] * (size_t)--s->nstarts);
    }
}

static void append_output(struct shim *s, int stream, const char *data, size_t len) {
    if (s->log < 0 || s->log_size >= SEGMENT_BYTES)
        open_segment(s);
    unsigned char head[5] = {(unsigned char)stream};
    put_u32(head + 1, len);
    struct iovec iov[2] = {{head, sizeof head}, {(void *)data, len}};
    ssize_t n = s->log < 0 ? -1 : writev(s->log, iov, 2);
    if (n != (ssize_t)(sizeof head + len)) {
        /* Disk full (the workspace's own limit): this output is lost, the record stays whole. */
        if (s->log >= 0 && ftruncate(s->log, s->log_size) < 0) { /* nothing better to do */ }
        return;
    }
    s->log_size += n;
    s->pos += (long long)len;
}

/* Read once from output `i`; what read() returned (0 or -1: it is closed now). */
static ssize_t pump_output(struct shim *s, int i) {
    char buf[BUFSZ];
    ssize_t n = read(s->out[i], buf, sizeof buf);
    if (n > 0)
        append_output(s, s->pty ? 3 : i + 1, buf, (size_t)n);
    else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {   /* a terminal says EIO when its last user left */
        close(s->out[i]);
        s->out[i] = -1;
    }
    return n;
}

static void reply(struct shim *s, char answer) {
    if (s->client >= 0 && write(s->client, &answer, 1) != 1) {
        close(s->client);
        s->client = -1;
    }
}

/* One message from the client: 'i' stdin data, 'c' close stdin, 'w' "COLS ROWS". */
static void serve_client(struct shim *s) {
    unsigned char head[5];
    if (read_exactly(s->client, (char *)head, sizeof head) < 0) {
        close(s->client);
        s->client = -1;
        return;
    }
    size_t len = get_u32(head + 1);
    if (len > sizeof s->pending || read_exactly(s->client, s->pending, len) < 0) {
        close(s->client);
        s->client = -1;
        return;
    }
    if (head[0] == 'i') {
        if (s->in < 0)
            return reply(s, 'n');
        s->npending = len, s->sent = 0;
        if (len == 0)
            reply(s, 'k');
    } else if (head[0] == 'c') {
        if (s->in < 0)
            return reply(s, 'n');
        if (s->pty) {
            char eof = 4;   /* ^D: a terminal has no "closed" short of hanging up */
            if (write(s->in, &eof, 1) < 0) { /* reported by the next write */ }
        } else {
            close(s->in);
            s->in = -1;
        }
        reply(s, 'k');
    } else if (head[0] == 'w' && s->pty) {
        unsigned cols = 0, rows = 0;
        s->pending[len < sizeof s->pending ? len : sizeof s->pending - 1] = '\0';
        struct winsize ws;
        if (sscanf(s->pending, "%u %u", &cols, &rows) != 2 || !cols || !rows || cols > 65535 || rows > 65535)
            return reply(s, 'x');
        ws = (struct winsize){.ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols};
        reply(s, ioctl(s->in, TIOCSWINSZ, &ws) == 0 ? 'k' : 'x');
    } else {
        reply(s, head[0] == 'w' ? 'n' : 'x');
    }
}

static void feed_stdin(struct shim *s) {
    ssize_t n = write(s->in, s->pending + s->sent, s->npending - s->sent);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n < 0) {   /* EPIPE: nobody reads it any more */
        s->npending = 0;
        return reply(s, 'e');
    }
    s->sent += (size_t)n;
    if (s->sent == s->npending) {
        s->npending = 0;
        reply(s, 'k');
    }
}

static long long monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * NSEC + ts.tv_nsec;
}

/* The command ended: keep what is left in its pipes (a bounded amount: a
 * background child of it may write forever), record how it ended, go. */
static void shim_finish(struct shim *s, int status) {
    for (int i = 0; i < 2; i++) {
        if (s->out[i] < 0)
            continue;
        fcntl(s->out[i], F_SETFL, fcntl(s->out[i], F_GETFL) | O_NONBLOCK);
        for (int reads = 0; reads < 256 && s->out[i] >= 0 && pump_output(s, i) > 0; reads++)
            ;
    }
    char line[96];
    snprintf(line, sizeof line, "%d %d %lld%s\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1,
             WIFSIGNALED(status) ? WTERMSIG(status) : 0, unix_ns(), s->timed_out ? " timeout" : "");
    write_small_file(s->dir, "exit", line);
    _exit(0);
}

static void shim_loop(struct shim *s, pid_t child) {
    sigset_t none;
    sigemptyset(&none);
    for (;;) {
        int status;
        if (shim_chld) {
            shim_chld = 0;
            if (waitpid(child, &status, WNOHANG) == child)
                shim_finish(s, status);
        }
        struct pollfd p[5];
        int n = 0, at_out[2] = {-1, -1}, at_listener = -1, at_client = -1, at_in = -1;
        for (int i = 0; i < 2; i++)
            if (s->out[i] >= 0)
                at_out[i] = n, p[n++] = (struct pollfd){.fd = s->out[i], .events = POLLIN};
        if (s->client < 0)
            at_listener = n, p[n++] = (struct pollfd){.fd = s->listener, .events = POLLIN};
        else if (s->npending == 0)
            at_client = n, p[n++] = (struct pollfd){.fd = s->client, .events = POLLIN};
        else if (s->in >= 0)
            at_in = n, p[n++] = (struct pollfd){.fd = s->in, .events = POLLOUT};
        struct timespec left, *wait = NULL;
        if (s->deadline && !s->timed_out) {
            long long ns = s->deadline - monotonic_ns();
            if (ns <= 0) {   /* the child's end comes as SIGCHLD, recorded as a timeout */
                s->timed_out = 1;
                kill(-child, SIGKILL);
                continue;
            }
            left = (struct timespec){ns / NSEC, ns % NSEC};
            wait = &left;
        }
        if (ppoll(p, (nfds_t)n, wait, &none) < 0)
            continue;   /* EINTR: SIGCHLD */
        for (int i = 0; i < 2; i++)
            if (at_out[i] >= 0 && p[at_out[i]].revents)
                pump_output(s, i);
        if (at_in >= 0 && p[at_in].revents)
            feed_stdin(s);
        if (at_client >= 0 && p[at_client].revents)
            serve_client(s);
        if (at_listener >= 0 && p[at_listener].revents) {
            s->client = accept4(s->listener, NULL, NULL, SOCK_CLOEXEC);
            struct timeval patience = {2, 0};   /* a client that stalls mid-message is dropped */
            if (s->client >= 0)
                setsockopt(s->client, SOL_SOCKET, SO_RCVTIMEO, &patience, sizeof patience);
        }
    }
}

static void shim_fail(int report, int e, const char *what, const char *name) {
    dprintf(report, "E %s %s '%s': %s\n", errno_name(e), what, name, strerror(e));
    _exit(1);
}

static void remove_entry(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
            unlinkat(dirfd(d), de->d_name, 0);
    if (d)
        closedir(d);
    rmdir(dir);
}

static int listen_here(int pid) {
    socklen_t len;
    struct sockaddr_un addr = control_address(pid, &len);
    int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l < 0 || bind(l, (struct sockaddr *)&addr, len) < 0 || listen(l, 16) < 0)
        return -1;
    return l;
}

void run_shim(char **cmd, const struct spawn_options *options, int report) {
    setsid();   /* out of the call's session: nothing that ends the call reaches us */
    int null = open("/dev/null", O_RDWR);
    for (int fd = 0; fd < 3; fd++)
        dup2(null, fd);
    close_other_fds(report, -1, -1);   /* the control connection above all */
    frame_fd = -1;
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    struct sigaction sa = {.sa_handler = shim_on_chld};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGCHLD, &sa, NULL);
    sigset_t chld, none;
    sigemptyset(&chld);
    sigemptyset(&none);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_SETMASK, &chld, NULL);   /* delivered only inside ppoll() */

    static struct shim s;
    s = (struct shim){.pty = options->cols > 0, .out = {-1, -1}, .in = -1, .listener = -1, .client = -1, .log = -1};
    int want_stdin = options->want_stdin;
    int child_fds[3] = {0, -1, -1}, ep[2];
    char terminal[64];
    if (s.pty) {
        int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
        struct winsize ws = {.ws_row = (unsigned short)options->rows, .ws_col = (unsigned short)options->cols};
        if (m < 0 || grantpt(m) < 0 || unlockpt(m) < 0 || ptsname_r(m, terminal, sizeof terminal) != 0)
            shim_fail(report, errno, "opening a terminal for", cmd[0]);
        ioctl(m, TIOCSWINSZ, &ws);
        s.out[0] = s.in = m;
    } else {
        int o[2], e[2], i[2];
        if (pipe2(o, O_CLOEXEC) < 0 || pipe2(e, O_CLOEXEC) < 0 || (want_stdin && pipe2(i, O_CLOEXEC) < 0))
            shim_fail(report, errno, "making pipes for", cmd[0]);
        s.out[0] = o[0], s.out[1] = e[0], child_fds[1] = o[1], child_fds[2] = e[1];
        if (want_stdin)
            s.in = i[1], child_fds[0] = i[0];
    }
    if (pipe2(ep, O_CLOEXEC) < 0)
        shim_fail(report, errno, "starting", cmd[0]);
    char path[PATH_MAX];
    const char *file = options->own ? "/proc/self/exe" : command_path(cmd[0], path, sizeof path);
    char *own_argv[MAX_OWN_ARGS + 2] = {"agentbox-exec"};
    if (options->own) {   /* this binary, wherever the provider put it: the child is a fork of it */
        int n = 0;
        while (cmd[n] && n < MAX_OWN_ARGS)   /* spawn refused more */
            own_argv[n + 1] = cmd[n], n++;
        own_argv[n + 1] = NULL;
    }
    pid_t child = fork();
    if (child == 0) {
        setsid();   /* its own session and group: signals and DELETE reach all of it */
        apply_task_limit();
        signal(SIGPIPE, SIG_DFL);
        signal(SIGCHLD, SIG_DFL);
        sigprocmask(SIG_SETMASK, &none, NULL);
        if (s.pty) {
            int t = open(terminal, O_RDWR);
            if (t < 0 || ioctl(t, TIOCSCTTY, 0) < 0)
                goto failed;
            child_fds[0] = child_fds[1] = child_fds[2] = t;
        }
        for (int fd = 0; fd < 3; fd++)
            if (child_fds[fd] != fd && dup2(child_fds[fd], fd) < 0)
                goto failed;
        unsetenv("AGENTBOX_PROCS");   /* the helper's own settings, not the command's */
        unsetenv("AGENTBOX_TEXT");
        if (options->own)
            execv(file, own_argv);
        else
            execvp(file, cmd);
    failed:;
        int e = errno;
        if (write(ep[1], &e, sizeof e) < 0) { /* the shim reports a start without an answer */ }
        _exit(127);
    }
    int e = errno;
    close(ep[1]);
    for (int fd = 0; fd < 3; fd++)
        if (child_fds[fd] > 2)
            close(child_fds[fd]);
    if (child < 0)
        shim_fail(report, e, "starting", cmd[0]);
    int exec_errno = exec_result(ep[0], child);
    if (exec_errno)
        shim_fail(report, exec_errno, "cannot run", cmd[0]);
    if (s.in >= 0)
        fcntl(s.in, F_SETFL, fcntl(s.in, F_GETFL) | O_NONBLOCK);
    snprintf(s.dir, sizeof s.dir, "%s/%d", procs_dir(), (int)child);
    remove_entry(s.dir);   /* a process of an earlier boot that had this PID */
    if (options->deadline_ms)
        s.deadline = monotonic_ns() + options->deadline_ms * (NSEC / 1000);
    if (mkdir(s.dir, 0700) < 0 || write_small_file(s.dir, "meta", options->meta) < 0 ||
        (s.listener = listen_here((int)child)) < 0) {
        kill(-child, SIGKILL);
        shim_fail(report, errno, "recording", cmd[0]);
    }
    open_segment(&s);
    dprintf(report, "OK %d\n", (int)child);
    close(report);
    shim_loop(&s, child);
}
