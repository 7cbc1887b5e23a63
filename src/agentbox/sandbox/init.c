/*
 * init: PID 1 of every workspace.  It reaps orphans, ends the sandbox on SIGTERM, kills the
 * largest process past the memory limit (-M), drops from root to the workspace's user (-U) once
 * it has read the TCP channel's key (-K), and keeps the control server (server.c) running, letting
 * go of its socket around a pause (SIGUSR1, SIGUSR2).  Why each, above cmd_init.
 */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helper.h"

#define READY_LINE "agentbox-exec ready"

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
 * Linux (SIGKILL).  -P TASKS is read by `run` (see apply_task_limit, command.c).
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
/* Read by init (-K) while it is root; the workers (worker.c) check TCP connections against it. */
unsigned char channel_key[CHANNEL_KEY_BYTES];

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

/* The id to answer the host with once the socket is made again (SIGUSR2): the one the host left beside the
 * socket, when there is one.  A workspace restored from another's checkpoint (a fork) holds that other's id in
 * this memory; the host writes the new one there before it asks.  The directory is the workload's to write, so
 * all a workload could do with the file is make its own host refuse this helper (the host checks the id). */
static const char *id_beside(const char *socket_path, const char *current) {
    static char id[65];
    const char *slash = strrchr(socket_path, '/');
    char path[4096];
    if (!slash || snprintf(path, sizeof path, "%.*s/workspace-id", (int)(slash - socket_path), socket_path) >= (int)sizeof path)
        return current;
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return current;
    ssize_t n = read(fd, id, sizeof id - 1);
    close(fd);
    while (n > 0 && (id[n - 1] == '\n' || id[n - 1] == ' '))
        n--;
    if (n <= 0)
        return current;
    id[n] = 0;
    for (ssize_t i = 0; i < n; i++)
        if (!((id[i] >= 'a' && id[i] <= 'z') || (id[i] >= '0' && id[i] <= '9') || id[i] == '-'))
            return current;
    return id;
}

int cmd_init(int argc, char **argv) {
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
            if (listener < 0 && socket_path) {
                workspace_id = id_beside(socket_path, workspace_id);
                listener = listen_on(socket_path);
            }
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
