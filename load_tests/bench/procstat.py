"""CPU seconds and resident memory of a server's process tree, read from /proc."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def stat_fields(stat: str) -> list[str]:
    """The fields of /proc/PID/stat after the command name (which may hold spaces): state, ppid, ..."""
    return stat[stat.rindex(")") + 2 :].split()


def read_proc_stats(proc: str = "/proc") -> dict[int, tuple[int, float]]:
    """{pid: (parent pid, user + system CPU seconds)} of every live process."""
    out = {}
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            with open(os.path.join(proc, entry, "stat")) as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat_fields(stat)
        out[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK)  # ppid; utime + stime
    return out


def process_tree(root: int, stats: dict[int, tuple[int, float]]) -> list[int]:
    """`root` and all its live descendants (BentoML's workers run in sessions of their own, so
    the tree is followed by parent pid)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def process_tree_cpu_seconds(root: int, proc: str = "/proc") -> float:
    """User + system CPU seconds of a server and every process under it."""
    stats = read_proc_stats(proc)
    return sum(stats[pid][1] for pid in process_tree(root, stats))


def process_tree_rss_bytes(root: int, proc: str = "/proc") -> int:
    """Resident memory of a server and every process under it (the sum of their RSS, so pages
    they share are counted once per process)."""
    total = 0
    for pid in process_tree(root, read_proc_stats(proc)):
        try:
            with open(os.path.join(proc, str(pid), "statm")) as f:
                total += int(f.read().split()[1]) * PAGE_SIZE
        except (OSError, IndexError, ValueError):
            continue
    return total


def signal_tree(pids: tuple[int, ...], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def process_state(pid: int, proc: str = "/proc") -> str:
    """R, S, T (stopped), ...; "" for a process that is gone."""
    try:
        with open(os.path.join(proc, str(pid), "stat")) as f:
            return stat_fields(f.read())[0]
    except (OSError, ValueError, IndexError):
        return ""


class ServerProcess:
    """What the benchmark reads of a server it started (`self.process`, in a session of its own):
    its process tree's CPU seconds and resident memory; how it waits its turn; and how it stops."""

    process: subprocess.Popen
    paused_pids: tuple[int, ...] = ()  # while paused: the tree, parents first

    def pause(self) -> None:
        """SIGSTOP to the whole tree, parents first: a server waiting its turn takes no CPU from
        the one measured (idle, LitServe's and Ray's processes took about 0.2 core)."""
        self.paused_pids = tuple(process_tree(self.process.pid, read_proc_stats()))
        signal_tree(self.paused_pids, signal.SIGSTOP)
        deadline = time.monotonic() + 2
        while any(process_state(pid) not in ("T", "") for pid in self.paused_pids) and time.monotonic() < deadline:
            time.sleep(0.005)

    def resume(self) -> None:
        signal_tree(self.paused_pids[::-1], signal.SIGCONT)
        self.paused_pids = ()

    def cpu_seconds(self) -> float:
        return process_tree_cpu_seconds(self.process.pid)

    def rss_bytes(self) -> int:
        return process_tree_rss_bytes(self.process.pid)

    def stop(self) -> None:
        from load_tests import server as launcher

        self.resume()
        launcher.stop(self.process)


@contextlib.contextmanager
def paused(servers: list[ServerProcess]):
    """with paused(others): the servers stopped (SIGSTOP) inside, running again after."""
    try:
        for server in servers:
            server.pause()
        yield
    finally:
        for server in servers:
            server.resume()
