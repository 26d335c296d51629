"""Virtual stacks in a known state."""

from __future__ import annotations

from pylontech_exporter.simulator import BatteryStack


def frozen_stack(**kwargs: object) -> BatteryStack:
    """A stack with a fixed, non-zero current (so power and flags are not trivial),
    time stopped so the exporter and the test see the same values."""
    stack = BatteryStack(seed=kwargs.pop("seed", 11), **kwargs)  # type: ignore[arg-type]
    stack.set_current(-12.3)
    stack.freeze()
    return stack


def healthy_stack(group: int, current: float, seed: int, modules: int = 2) -> BatteryStack:
    """``modules`` US3000C frozen at state of charge 0.6 with balanced cells."""
    stack = BatteryStack(modules=modules, groups=[group], model="US3000C", seed=seed, soc=0.6)
    stack.freeze()
    with stack.lock:
        for module in stack.modules:
            module.soc = 0.6
            module.cell_offsets = [0.0] * len(module.cell_offsets)
        stack.set_current(current)  # also settles the cell voltages
    return stack
