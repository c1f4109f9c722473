"""ABBA: two workers take two locks in opposite orders.

The smallest protocol with a lock-order inversion (lockdep's selftest "ABBA"). Worker
``forward`` takes A then B; worker ``backward`` takes B then A in variant ``inverted``
and A then B in variant ``ordered``, the fix (one global order).

    stress run --workload ./examples/abba.py
    stress run --workload ./examples/abba.py --variant ordered --duration 30s --workers 4 --seed 7

Locking order (variant ordered): A -> B.
"""

from stress.workload import Int, Role, Spinlock, Struct, Variant, Workload, invariant, op


class State(Struct):
    a = Spinlock("A")
    b = Spinlock("B")
    inside = Int()  # workers between taking A and B and releasing them: at most one
    ab = Int()  # critical sections done in order A, B
    ba = Int()  # ... in order B, A


class ABBA(Workload):
    """Two locks, two orders."""

    name = "abba"
    state = State
    duration = 10.0
    variants = [
        Variant("inverted", expect=["lock-order-inversion", "deadlock"],
                provenance="lockdep selftest ABBA (lib/locking-selftest.c)",
                doc="backward takes B then A: a cycle A -> B -> A"),
        Variant("ordered", expect="clean", provenance="the fix: one global order, A before B",
                doc="both roles take A then B"),
    ]
    events = {"both": "holding A and B ({a} inside)"}

    class forward(Role):
        """Takes A, then B."""

        @op()
        def a_then_b(self, s):
            with s.a:
                with s.b:
                    s.inside += 1
                    self.check(s.inside == 1, "mutual-exclusion", f"{s.inside} workers inside")
                    s.ab += 1
                    s.inside -= 1

    class backward(Role):
        """Takes B, then A (inverted) or A, then B (ordered)."""

        @op()
        def b_then_a(self, s):
            first, second = (s.a, s.b) if self.variant == "ordered" else (s.b, s.a)
            with first:
                with second:
                    s.inside += 1
                    self.check(s.inside == 1, "mutual-exclusion", f"{s.inside} workers inside")
                    s.ba += 1
                    s.inside -= 1

    checks = ("mutual-exclusion",)

    @invariant("nobody-inside-at-rest")
    def nobody_inside(self, s):
        """With every worker parked between operations, nobody is inside."""
        if s.inside != 0:
            return f"inside == {s.inside} while every worker is parked"

    def summary(self, s):
        return {"a-then-b": s.ab, "b-then-a": s.ba}
