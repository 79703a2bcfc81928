"""One loop on several machines: every machine runs the same `humpback run` with its own `machine_rank`, and
machine 0 leads.

Machine 0 runs the loop as it runs on one machine: it holds the output folder's lock, decides each stage from its
marker (skip, run, resume, publish), runs the single-process stages (corpus preparation) alone, and writes the
markers and the loop report. It tells the other machines each decision: a stage to skip, a stage to join (just
before it launches it: each machine then launches its part, `accelerate launch --machine_rank R`, which joins
machine 0's processes in one process group), or a single-process stage it has finished. They write no marker, lock or
report.

Why the other machines take machine 0's decisions instead of reading the markers themselves: a machine reading a
marker on a shared file system while machine 0 writes it, or soon after (an NFS client caches a file's absence for
up to acdirmax, 60 s by default), can see an older version than machine 0 did; a stage restarted with `--from`
leaves a marker that reads the same before and after it reruns, so a machine waiting for machine 0 to finish it
cannot tell the two apart; and every machine would hash the inputs itself, where one difference (a path, a file not
yet visible) splits the decisions. One machine skipping a stage that another launches would put them into the
process groups of different stages. A decision sent by machine 0 is the same on every machine by construction, and
the channel (torch.distributed's TCPStore, served by machine 0 at main_process_port + 1) lives for one run only, so
nothing an earlier run left behind is taken for this one's.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from humpback_trl.errors import UserError

if TYPE_CHECKING:
    from humpback_trl.configs import LoopArguments
    from humpback_trl.pipeline import Stage

STORE_PORT_OFFSET = 1  # the stages' own process groups meet at main_process_port
# Every machine's `humpback run` starts within this time (a scheduler starts them together), or the run stops.
JOIN_TIMEOUT = timedelta(minutes=15)
# The other machines wait this long for machine 0's next word: its longest single-process stage. Machine 0's death
# ends the wait at once (the store's connection closes).
FOLLOW_TIMEOUT = timedelta(days=30)
# Machines that received the report say so within this time, after which machine 0 exits anyway.
GOODBYE_TIMEOUT = timedelta(seconds=60)
ALONE = "on machine 0 alone"  # a single-process stage machine 0 has finished: nothing for the others to run


def plan_identity(stages: list[Stage]) -> list[list[str]]:
    """What every machine must agree on: each stage's name, entry point, recipe and overrides (machine-independent:
    no rank, no thread count)."""
    return [[stage.name, stage.module, str(stage.recipe), *stage.overrides] for stage in stages]


def first_difference(ours: list[list[str]], theirs: list[list[str]]) -> str:
    """The name of the first stage where two plans differ (one may be longer)."""
    index = next(i for i in range(max(len(ours), len(theirs))) if ours[i : i + 1] != theirs[i : i + 1])
    return (ours[index : index + 1] or theirs[index : index + 1])[0][0]


class Machines:
    """The channel between machine 0 and the other machines of one run of the loop."""

    def __init__(self, loop: LoopArguments, stages: list[Stage]) -> None:
        from torch.distributed import DistError, TCPStore  # loads torch; only a run on several machines needs it

        self.rank = loop.machine_rank
        self.count = loop.num_machines
        self.address = f"{loop.main_process_ip}:{loop.main_process_port + STORE_PORT_OFFSET}"
        # No ": " in the line, which would read as a `[humpback] stage: status` line.
        print(f"[humpback] machine {self.rank} of {self.count} joins the loop's machines at {self.address}", flush=True)
        try:
            self.store = TCPStore(
                loop.main_process_ip, loop.main_process_port + STORE_PORT_OFFSET, self.count, self.rank == 0,
                timeout=JOIN_TIMEOUT, wait_for_workers=True,
            )  # fmt: skip
        except DistError as error:
            raise UserError(
                f"machine {self.rank}: the {self.count} machines of the loop did not all join at {self.address} "
                f"within {JOIN_TIMEOUT.seconds // 60} min ({str(error).splitlines()[0]}); start `humpback run` on "
                "every machine with the same options and its own --machine_rank"
            ) from None
        self.agree(plan_identity(stages))
        self.store.set_timeout(FOLLOW_TIMEOUT)

    def agree(self, identity: list[list[str]]) -> None:
        """Every machine plans the same stages (same recipes, options and output folder), or none starts any."""
        if self.rank == 0:
            self.store.set("plan", json.dumps(identity))
            for rank in range(1, self.count):
                answer = self.hear(f"ready/{rank}")
                if answer != "ok":
                    raise UserError(answer)
            return
        planned = json.loads(self.hear("plan"))
        if planned == identity:
            self.store.set(f"ready/{self.rank}", "ok")
            return
        problem = (
            f"machine {self.rank} plans another loop than machine 0 (first difference: stage "
            f"{first_difference(identity, planned)!r}); every machine runs `humpback run` with the same recipe "
            "folder and options, only --machine_rank differs"
        )
        self.store.set(f"ready/{self.rank}", problem)
        raise UserError(problem)

    def tell(self, stage: str, action: str) -> None:
        """Machine 0: what the other machines do for this stage (an action of pipeline.decide, or ALONE)."""
        self.store.set(f"stage/{stage}", action)

    def action(self, stage: str) -> str:
        """The other machines: machine 0's decision for this stage, waiting for it."""
        return self.hear(f"stage/{stage}")

    def hear(self, key: str) -> str:
        from torch.distributed import DistError

        try:
            return self.store.get(key).decode()
        except DistError:
            who = "another machine did not answer" if self.rank == 0 else "machine 0 stopped before the loop finished"
            raise UserError(
                f"machine {self.rank}: {who} ({self.address}; its output says why); run `humpback run` again on "
                "every machine: finished stages are skipped, an interrupted one resumes"
            ) from None

    def share_report(self, report: dict[str, Any]) -> None:
        """Machine 0: the loop report, for the other machines to print; it waits (briefly) until they have it."""
        from torch.distributed import DistError

        self.store.set("report", json.dumps(report))
        self.store.set_timeout(GOODBYE_TIMEOUT)
        try:
            self.store.wait([f"received/{rank}" for rank in range(1, self.count)])
        except DistError:
            print("[humpback] a machine did not confirm the report; every stage had finished on it", flush=True)

    def report(self) -> dict[str, Any]:
        """The other machines: machine 0's loop report, once it has written it."""
        report = json.loads(self.hear("report"))
        self.store.set(f"received/{self.rank}", "1")
        return report
