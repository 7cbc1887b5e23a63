/*
 * Background processes: started by one call, then found again by PID by any later one.
 *
 * `spawn` forks a supervisor ("shim") that leaves the call's session and
 * starts the command in a process group of its own, with pipes or a
 * terminal.  Everything about a process lives in the workspace, under
 * PROCS_DIR/<pid>/, so it outlives the call, the host's connection and the
 * agentbox server itself:
 *
 *   meta        what the host said about it at the start (JSON, opaque here)
 *   out.<N>     its output from offset N (bytes of output before it): records
 *               u8 stream (1 stdout, 2 stderr, 3 terminal), u32 length
 *               (big-endian), data.  A new segment every SEGMENT_BYTES; the
 *               oldest go while the newer ones hold KEEP_BYTES.
 *   exit        "<exit code or -1> <signal or 0> <unix ns>[ stopped]", once it ended
 *
 * The directory is on the workspace's own disk, so output counts against its
 * size like any other file.  The shim listens for stdin, closing stdin and
 * terminal sizes on an abstract socket named after that directory, not on a
 * file in it: under gVisor a socket file on a bind-mounted disk is a host
 * socket, and a sandbox holding one cannot be checkpointed (pause).  The subcommands the host calls:
 *
 *   spawn [-i] [-c COLS -r ROWS] [-j META] -- ARGV   "OK <pid>" or "E <ERRNO> <why>"
 *   procs [PID]     per process "P <pid> <meta bytes> <exit bytes> <alive>\n", meta, exit
 *   output PID OFFSET [-f]   "S <first offset sent>\n", then records as above;
 *                   stream 0 is the end ("exit" content), 8 a jump past output
 *                   rotated away meanwhile (data: the offset it goes on from), 9 a keep-alive
 *   signal PID SIGNUM         to its whole group; SIGKILL until the group is empty
 *   input PID [-c | -w COLS ROWS]   stdin (from our stdin) | close it | resize
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
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

#define PROCS_DIR "/.agentbox/procs"   /* on the workspace's disk; AGENTBOX_PROCS elsewhere (E2B) */
#define SEGMENT_BYTES (4LL << 20)
#define KEEP_BYTES (16LL << 20)
#define MAX_SEGMENTS 64
#define MAX_META (64 << 10)
#define KEEPALIVE_NS (2 * NSEC)

static const char *procs_dir(void) {
    const char *dir = getenv("AGENTBOX_PROCS");
    return dir && *dir ? dir : PROCS_DIR;
}

static long long unix_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec * NSEC + ts.tv_nsec;
}

static void put_u32(unsigned char *p, size_t v) {
    p[0] = (unsigned char)(v >> 24), p[1] = (unsigned char)(v >> 16), p[2] = (unsigned char)(v >> 8), p[3] = (unsigned char)v;
}

static size_t get_u32(const unsigned char *p) {
    return (size_t)p[0] << 24 | (size_t)p[1] << 16 | (size_t)p[2] << 8 | p[3];
}

/* A process's directory, or -1 (and the error answered) when `arg` names none. */
static int proc_dir(const char *arg, char *dir, size_t size, int *pid) {
    char *end;
    long n = strtol(arg, &end, 10);
    struct stat st;
    if (*arg == '\0' || *end || n <= 0 || n > 1 << 30)
        return report_error(EINVAL, "not a process id"), -1;
    snprintf(dir, size, "%s/%ld", procs_dir(), n);
    if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode))
        return report_error(ENOENT, "no such process"), -1;
    *pid = (int)n;
    return 0;
}

/* Up to `max` bytes of a small file into a malloc'd buffer; NULL when it is missing. */
static char *slurp(const char *path, size_t max, size_t *len) {
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return NULL;
    char *buf = malloc(max + 1);
    size_t got = 0;
    ssize_t n;
    while (buf && got < max && ((n = read(fd, buf + got, max - got)) > 0 || (n < 0 && errno == EINTR)))
        got += n > 0 ? (size_t)n : 0;
    close(fd);
    if (buf)
        buf[got] = '\0';
    *len = got;
    return buf;
}

static int write_small_file(const char *dir, const char *name, const char *content) {
    char tmp[256], path[256];
    snprintf(tmp, sizeof tmp, "%s/.%s", dir, name);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return -1;
    int bad = write_all(fd, content, strlen(content)) < 0;
    close(fd);
    return bad ? -1 : rename(tmp, path);
}

/* ---- the shim --------------------------------------------------------------- */

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
    snprintf(line, sizeof line, "%d %d %lld\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1,
             WIFSIGNALED(status) ? WTERMSIG(status) : 0, unix_ns());
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
        if (ppoll(p, (nfds_t)n, NULL, &none) < 0)
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

/* The shim's abstract socket ("\0<procs dir>/<pid>/ctl"); its length in *len. */
static struct sockaddr_un control_address(int pid, socklen_t *len) {
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    int n = snprintf(addr.sun_path + 1, sizeof addr.sun_path - 1, "%s/%d/ctl", procs_dir(), pid);
    n = n < (int)sizeof addr.sun_path - 1 ? n : (int)sizeof addr.sun_path - 2;
    *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
    return addr;
}

static int listen_here(int pid) {
    socklen_t len;
    struct sockaddr_un addr = control_address(pid, &len);
    int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l < 0 || bind(l, (struct sockaddr *)&addr, len) < 0 || listen(l, 16) < 0)
        return -1;
    return l;
}

static void run_shim(char **cmd, int want_stdin, int cols, int rows, const char *meta, int report) {
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
    s = (struct shim){.pty = cols > 0, .out = {-1, -1}, .in = -1, .listener = -1, .client = -1, .log = -1};
    int child_fds[3] = {0, -1, -1}, ep[2];
    char terminal[64];
    if (s.pty) {
        int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
        struct winsize ws = {.ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols};
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
    const char *file = command_path(cmd[0], path, sizeof path);
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
    if (mkdir(s.dir, 0700) < 0 || write_small_file(s.dir, "meta", meta) < 0 || (s.listener = listen_here((int)child)) < 0) {
        kill(-child, SIGKILL);
        shim_fail(report, errno, "recording", cmd[0]);
    }
    open_segment(&s);
    dprintf(report, "OK %d\n", (int)child);
    close(report);
    shim_loop(&s, child);
}

int cmd_spawn(int argc, char **argv) {
    int opt, want_stdin = 0;
    long cols = 0, rows = 0;
    const char *meta = "{}";
    optind = 1;
    while ((opt = getopt(argc, argv, "+ic:r:j:")) != -1) {
        if (opt == 'i')
            want_stdin = 1;
        else if (opt == 'c')
            cols = strtol(optarg, NULL, 10);
        else if (opt == 'r')
            rows = strtol(optarg, NULL, 10);
        else if (opt == 'j' && strlen(optarg) <= MAX_META)
            meta = optarg;
        else
            return usage();
    }
    if (optind >= argc || cols < 0 || rows < 0 || cols > 65535 || rows > 65535 || (cols > 0) != (rows > 0))
        return usage();
    struct stat st;
    if (stat(procs_dir(), &st) < 0 || !S_ISDIR(st.st_mode))
        return report_error(ENOTSUP, "this workspace has no process table (it was made before agentbox had one)");
    int report[2];
    if (pipe2(report, O_CLOEXEC) < 0)
        return report_error(errno, NULL);
    fflush(stdout);   /* nothing buffered may be written twice */
    pid_t shim = fork();
    if (shim < 0)
        return report_error(errno, "starting the process supervisor");
    if (shim == 0) {
        close(report[0]);
        run_shim(argv + optind, want_stdin, (int)cols, (int)rows, meta, report[1]);
    }
    close(report[1]);
    char answer[512];
    size_t got = 0;
    ssize_t n;
    while (got < sizeof answer - 1 && ((n = read(report[0], answer + got, sizeof answer - 1 - got)) > 0 ||
                                       (n < 0 && errno == EINTR)))
        got += n > 0 ? (size_t)n : 0;
    answer[got] = '\0';
    waitpid(shim, NULL, WNOHANG);
    if (got == 0)
        return report_error(EIO, "the process supervisor died while starting the process");
    fputs(answer, stdout);
    return flush_stdout();
}

/* ---- the table ---------------------------------------------------------------- */

static int describe(int pid) {
    char dir[128], path[192];
    size_t meta_len = 0, exit_len = 0;
    snprintf(dir, sizeof dir, "%s/%d", procs_dir(), pid);
    snprintf(path, sizeof path, "%s/meta", dir);
    char *meta = slurp(path, MAX_META, &meta_len);
    snprintf(path, sizeof path, "%s/exit", dir);
    char *ended = slurp(path, 256, &exit_len);
    if (!meta) {   /* being made or removed right now */
        free(ended);
        return 0;
    }
    printf("P %d %zu %zu %d\n", pid, meta_len, exit_len, !ended && kill(pid, 0) == 0);
    fwrite(meta, 1, meta_len, stdout);
    if (ended)
        fwrite(ended, 1, exit_len, stdout);
    free(meta);
    free(ended);
    return 0;
}

int cmd_procs(int argc, char **argv) {
    if (argc > 2)
        return usage();
    if (argc == 2) {
        char dir[128];
        int pid;
        if (proc_dir(argv[1], dir, sizeof dir, &pid) < 0)
            return 1;
        describe(pid);
        return flush_stdout();
    }
    DIR *d = opendir(procs_dir());
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL) {
        char *end;
        long pid = strtol(de->d_name, &end, 10);
        if (pid > 0 && !*end)
            describe((int)pid);
    }
    if (d)
        closedir(d);
    return flush_stdout();
}

/* At boot: whatever has no "exit" ended when the workspace stopped. */
void procs_mark_stopped(void) {
    DIR *d = opendir(procs_dir());
    struct dirent *de;
    char dir[300], path[320], line[96];
    snprintf(line, sizeof line, "-1 %d %lld stopped\n", SIGKILL, unix_ns());
    while (d && (de = readdir(d)) != NULL) {
        if (de->d_name[0] < '0' || de->d_name[0] > '9')
            continue;
        snprintf(dir, sizeof dir, "%s/%s", procs_dir(), de->d_name);
        snprintf(path, sizeof path, "%s/exit", dir);
        if (access(path, F_OK) != 0)
            write_small_file(dir, "exit", line);
    }
    if (d)
        closedir(d);
}

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

/* ---- signals and input -------------------------------------------------------- */

int cmd_signal(int argc, char **argv) {
    char dir[128], path[192];
    int pid;
    if (argc != 3)
        return usage();
    if (proc_dir(argv[1], dir, sizeof dir, &pid) < 0)
        return 1;
    int sig = atoi(argv[2]);
    snprintf(path, sizeof path, "%s/exit", dir);
    if (sig <= 0 || sig >= 65)
        return report_error(EINVAL, "not a signal number");
    if (access(path, F_OK) == 0)
        return report_error(ESRCH, "the process has already exited");
    if (kill(-pid, sig) < 0 && kill(pid, sig) < 0)
        return report_error(errno, NULL);
    if (sig == SIGKILL) {
        /* Again until the group is empty: under gVisor a member inside fork() when the signal
         * lands can still add a child that never saw it (see kill_group in agentbox-exec.c). */
        long long give_up = now_ns() + 5 * NSEC;
        struct timespec pause = {0, 1000000};
        while (kill(-pid, SIGKILL) == 0 && now_ns() < give_up)
            nanosleep(&pause, NULL);
        /* ... and until its supervisor has written how it ended, so the next look says so. */
        while (access(path, F_OK) != 0 && now_ns() < give_up)
            nanosleep(&pause, NULL);
    }
    puts("OK");
    return flush_stdout();
}

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
