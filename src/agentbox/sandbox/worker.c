/*
 * A worker of the control server (server.c): the control protocol, served one call after another.
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

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helper.h"

#define MAX_REQUEST (64 << 20)

/* Set while a worker serves a call it may outlive: leave() (output.c) jumps back here. */
sigjmp_buf *call_done;
pid_t worker_pid;
/* The call leaves nothing behind, so its worker may serve another (run.c clears it when it
 * hands its pipes to a drainer). */
int keep_worker;

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
void worker(const char *id, int unix_l, int tcp_l, int server, pid_t server_pid) {
    unix_listener = unix_l;
    tcp_listener = tcp_l;
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
