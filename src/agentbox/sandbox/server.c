/*
 * The control server, a child of init: it listens on the control socket (-S), a Unix socket in
 * a directory bind-mounted from the host, and keeps workers (worker.c) forked ahead of the calls
 * on it and on the TCP listener (-T, handshake.c).  init starts it again if it dies, and ends it
 * (SIGTERM) to let go of the socket.
 */

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helper.h"

/* The control socket, listening; -1 (and why, on stderr) if it cannot be made. */
int listen_on(const char *path) {
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

pid_t start_server(int s, int t, const char *id) {
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
                worker(id, s, t, pair[1], self);
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
