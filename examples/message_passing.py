"""Message passing (litmus MP) on relaxed fields: a writer publishes ``data`` then ``flag``;
a reader that sees the new ``flag`` must see that ``data`` or a newer one.

On ARMv8 this needs ``smp_wmb`` between the writer's stores and ``smp_rmb`` between the
reader's loads (or a lock around both sides: an acquisition is an acquire, a release a
release). The fields are ``Relaxed(Int())``, so the harness emulates ARMv8's ordering on
them (shm_model/weak.py); ``stress litmus`` checks the emulation itself.

    stress run --workload ./examples/message_passing.py --variant plain
    stress run --workload ./examples/message_passing.py --variant wmb-rmb --schedule pct

Locking order (variant locked): one lock, ``L``.
"""

from stress.workload import (Int, Relaxed, Role, Spinlock, Struct, Variant, Workload, loc_of, op, smp_rmb, smp_wmb,
                             spin_lock, spin_unlock, value)


class State(Struct):
    lock = Spinlock("L")
    data = Relaxed(Int())
    flag = Relaxed(Int())
    published = Int()  # plain counters for the summary
    checked = Int()


class MessagePassing(Workload):
    """One writer publishes generations; readers check data is no older than flag."""

    name = "message-passing"
    state = State
    duration = 5.0
    variants = [
        Variant("plain", expect=["stale-read"], provenance="litmus MP: allowed on ARMv8 (herd7 aarch64.cat)",
                doc="no barrier on either side: the stores or the loads reorder"),
        Variant("wmb-only", expect=["stale-read"], provenance="litmus MP+wmb: allowed on ARMv8",
                doc="smp_wmb in the writer only: the reader's loads still reorder"),
        Variant("wmb-rmb", expect="clean", provenance="litmus MP+wmb+rmb: forbidden on ARMv8",
                doc="smp_wmb in the writer, smp_rmb in the reader"),
        Variant("locked", expect="clean", provenance="spin_lock is an acquire, spin_unlock a release",
                doc="both sides under lock L"),
    ]

    class writer(Role):
        """Publishes generation n: data = n, [smp_wmb], flag = n."""

        count = 1

        def setup(self, s):
            self.gen = 0

        @op()
        def publish(self, s):
            self.gen += 1
            locked = self.variant == "locked"
            if locked:
                spin_lock(s.lock)
            s.data = self.gen
            if self.variant in ("wmb-only", "wmb-rmb"):
                smp_wmb(self.cpu)
            s.flag = self.gen
            if locked:
                spin_unlock(s.lock)
            s.published += 1

    class reader(Role):
        """Reads flag, [smp_rmb], data; data older than flag is a stale read."""

        count = 2

        @op()
        def check(self, s):
            locked = self.variant == "locked"
            if locked:
                spin_lock(s.lock)
            f = value(s.flag)
            if self.variant == "wmb-rmb":
                smp_rmb(self.cpu)
            d = value(s.data)
            if locked:
                spin_unlock(s.lock)
            s.checked += 1
            if d < f:
                self.cpu.finding("stale-read", "BUG: stale read of data in check (reordered)", function="check",
                                 location="data", value=d, expected=f"data >= flag = {f}",
                                 memory=self.cpu.wm.explain(loc_of(s, "data")))

    def summary(self, s):
        return {"published": s.published, "checked": s.checked}
