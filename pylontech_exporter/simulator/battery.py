"""State and physics of virtual modules and of a stack of them.

A :class:`VirtualModule` holds what a BMS measures (cell voltages, temperatures, current,
capacities, cycles) as plain attributes that tests may set directly. :meth:`BatteryStack.
advance` moves simulated time forward: a load profile draws or pushes current, the state
of charge follows it (coulomb counting), cell voltages follow an LFP open-circuit curve
plus slowly drifting per-cell offsets, temperatures follow the current. Alarm states,
protections and the 0x92 flags are derived from the measured values when asked for, so
setting a cell to 3.8 V shows up in the next 0x44 answer. Everything random comes from
one ``random.Random(seed)``: same seed and same calls, same numbers.
"""

from __future__ import annotations

import bisect
import math
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable, Protocol, Union

from ..models import (
    AlarmState,
    ManagementInfo,
    ManufacturerInfo,
    ModuleAlarms,
    ModuleSerialNumber,
    ModuleStatus,
    ModuleValues,
    Protections,
    SoftwareVersion,
    master_address,
    module_address,
)
from .faults import FaultPlan
from .models import ModuleModel, get_model

#: (state of charge, open-circuit cell voltage) of an LFP cell at room temperature.
OCV_CURVE: tuple[tuple[float, float], ...] = (
    (0.00, 2.80),
    (0.03, 3.00),
    (0.06, 3.12),
    (0.10, 3.20),
    (0.20, 3.25),
    (0.30, 3.28),
    (0.40, 3.295),
    (0.50, 3.305),
    (0.60, 3.315),
    (0.70, 3.325),
    (0.80, 3.335),
    (0.90, 3.35),
    (0.95, 3.37),
    (0.99, 3.43),
    (1.00, 3.50),
)
_OCV_SOC = [soc for soc, _ in OCV_CURVE]

#: A cell above this or below CELL_ERROR_LOW is flagged in Status 4/5 (spec 3.5).
CELL_ERROR_HIGH = 4.2
CELL_ERROR_LOW = 1.0
#: |current| above which Status 3 reports an effective charge/discharge current.
EFFECTIVE_CURRENT = 0.1
#: 0x92: charge-immediately flags below these SOCs, full-charge request after this long
#: without reaching FULL_SOC.
CHARGE_IMMEDIATELY_1_SOC = 0.09
CHARGE_IMMEDIATELY_2_SOC = 0.13
FULL_SOC = 0.97
FULL_CHARGE_REQUEST_AFTER = 30 * 86400.0
#: Longest physics step; longer advances are split so the dynamics stay stable.
MAX_STEP = 60.0


def ocv(soc: float) -> float:
    """Open-circuit voltage of one LFP cell at ``soc`` (0..1), linear between points."""
    soc = min(max(soc, 0.0), 1.0)
    i = bisect.bisect_right(_OCV_SOC, soc)
    if i >= len(OCV_CURVE):
        return OCV_CURVE[-1][1]
    (s0, v0), (s1, v1) = OCV_CURVE[i - 1], OCV_CURVE[i]
    return v0 + (v1 - v0) * (soc - s0) / (s1 - s0)


def _q(value: float, scale: int) -> float:
    """``value`` at wire resolution, computed as the codec rounds it, so a reading built
    from the state decodes to exactly the same floats."""
    return round(value * scale) / scale


def _state(value: float, low: float, high: float) -> AlarmState:
    if value > high:
        return AlarmState.HIGH
    if value < low:
        return AlarmState.LOW
    return AlarmState.NORMAL


class Load(Protocol):
    """Current of ``module`` (A, + charging) at simulated time ``t`` seconds."""

    def __call__(self, t: float, module: VirtualModule, rng: random.Random) -> float: ...


@dataclass(frozen=True)
class SineLoad:
    """A slow sine of ``amplitude`` C (fraction of capacity per hour) around ``offset`` C,
    plus Gaussian noise of ``noise`` C. Modules share the phase, like a parallel stack."""

    amplitude: float = 0.3
    period: float = 3600.0
    offset: float = 0.0
    noise: float = 0.005

    def __call__(self, t: float, module: VirtualModule, rng: random.Random) -> float:
        c_rate = self.offset + self.amplitude * math.sin(2 * math.pi * t / self.period)
        if self.noise:
            c_rate += rng.gauss(0.0, self.noise)
        return c_rate * module.model.capacity


@dataclass(frozen=True)
class ConstantCurrent:
    """The same current in every module (A, + charging)."""

    amperes: float

    def __call__(self, t: float, module: VirtualModule, rng: random.Random) -> float:
        return self.amperes


class VirtualModule:
    """One module: measured state as settable attributes, readings derived from it.

    Set ``cell_voltages``, ``temperatures``, ``current``, ``remaining_capacity``,
    ``cycle_number`` (or ``soc``) directly; freeze the stack to keep them exactly as set.
    ``extended_capacity`` is the capacity form this module answers in (the stack sets it
    from the group master). ``present = False`` makes the module silent.
    """

    #: Cell series resistance per Ah of capacity (ohm * Ah): 0.8 milliohm for 50 Ah.
    RESISTANCE_AH = 0.04
    #: Cell offset random walk, volts per sqrt(hour).
    DRIFT_RATE = 0.0004
    #: Temperature time constant (s) and steady-state rise per C of current (K).
    THERMAL_TAU = 1200.0
    HEATING_PER_C = 12.0

    def __init__(
        self,
        model: ModuleModel,
        group: int,
        address: int,
        serial_number: str,
        rng: random.Random,
        soc: float = 0.6,
        ambient: float = 25.0,
    ) -> None:
        self.model = model
        self.group = group
        self.address = address
        self.serial_number = serial_number
        self.present = True
        self.extended_capacity = model.extended_capacity
        self.full_capacity = model.capacity
        self.remaining_capacity = model.capacity * soc
        self.current = 0.0
        self.cycle_number = rng.randint(5, 120)
        self.ambient = ambient
        self.buzzer_on = False
        #: A protection tripped during simulated time and has not cleared yet.
        self.charge_latched = False
        self.discharge_latched = False
        #: Seconds since the state of charge last reached FULL_SOC (drives 0x92 bit 3).
        self.seconds_since_full = rng.uniform(0, 10 * 86400)
        #: Discharged Ah not yet counted as a cycle.
        self.throughput = 0.0
        self.cell_offsets = [rng.gauss(0.0, 0.002) for _ in range(model.cells)]
        self._sensor_offsets = [rng.gauss(0.0, 0.4) for _ in range(model.temperatures)]
        self.temperatures = [ambient + off for off in self._sensor_offsets]
        self.cell_voltages = self._cell_voltages()

    # --- state ----------------------------------------------------------------------

    @property
    def soc(self) -> float:
        """State of charge, 0..1 (remaining / full capacity)."""
        return self.remaining_capacity / self.full_capacity if self.full_capacity else 0.0

    @soc.setter
    def soc(self, value: float) -> None:
        self.remaining_capacity = self.full_capacity * min(max(value, 0.0), 1.0)

    @property
    def voltage(self) -> float:
        """Module voltage: the sum of the cells, as the BMS measures it."""
        return sum(self.cell_voltages)

    def settle(self) -> None:
        """Recompute cell voltages from the state of charge, offsets and current (after
        setting ``soc`` or ``current`` by hand, to get consistent cells at once)."""
        self.cell_voltages = self._cell_voltages()

    def drift_cell(self, cell: int, volts: float) -> None:
        """Shift 1-based ``cell`` by ``volts``, now and from then on (an aging cell)."""
        self.cell_offsets[cell - 1] += volts
        self.cell_voltages[cell - 1] += volts

    def _cell_voltages(self) -> list[float]:
        base = ocv(self.soc) + self.current * self.RESISTANCE_AH / self.model.capacity
        return [base + offset for offset in self.cell_offsets]

    # --- derived conditions ---------------------------------------------------------

    def protections(self) -> Protections:
        """Status 1, from the measured values and the 0x47 thresholds."""
        p = self.model.parameters
        return Protections(
            module_under_voltage=self.voltage < p.module_under_voltage_limit,
            charge_over_temperature=max(self.temperatures) > p.charge_high_temperature_limit,
            discharge_over_temperature=max(self.temperatures) > p.discharge_high_temperature_limit,
            discharge_over_current=-self.current > abs(p.discharge_current_limit),
            charge_over_current=self.current > p.charge_current_limit,
            cell_under_voltage=min(self.cell_voltages) < p.cell_under_voltage_limit,
            module_over_voltage=self.voltage > p.module_high_voltage_limit,
        )

    def cell_errors(self) -> tuple[bool, ...]:
        """Status 4/5: cells above 4.2 V or below 1 V."""
        return tuple(not CELL_ERROR_LOW <= v <= CELL_ERROR_HIGH for v in self.cell_voltages)

    def charge_blocked(self) -> bool:
        """The BMS has opened the charge MOSFET (a fault now, or one not yet cleared)."""
        return self.charge_latched or self._charge_fault()

    def discharge_blocked(self) -> bool:
        """The BMS has opened the discharge MOSFET (a fault now, or one not yet cleared)."""
        return self.discharge_latched or self._discharge_fault()

    def _charge_fault(self) -> bool:
        p = self.model.parameters
        pr = self.protections()
        return (
            pr.module_over_voltage
            or pr.charge_over_temperature
            or pr.charge_over_current
            or max(self.cell_voltages) > p.cell_high_voltage_limit
            or min(self.temperatures) < p.charge_low_temperature_limit
            or any(self.cell_errors())
        )

    def _discharge_fault(self) -> bool:
        p = self.model.parameters
        pr = self.protections()
        return (
            pr.module_under_voltage
            or pr.cell_under_voltage
            or pr.discharge_over_temperature
            or pr.discharge_over_current
            or min(self.temperatures) < p.discharge_low_temperature_limit
            or min(self.cell_voltages) < CELL_ERROR_LOW
        )

    @property
    def fully_charged(self) -> bool:
        return round(self.remaining_capacity * 1000) >= round(self.full_capacity * 1000)

    # --- readings (what the codec builds the answers from) --------------------------

    def values(self) -> ModuleValues:
        """0x42, at wire resolution."""
        return ModuleValues(
            address=self.address,
            cell_voltages=tuple(_q(v, 1000) for v in self.cell_voltages),
            temperatures=tuple(_q(t, 10) for t in self.temperatures),
            current=_q(self.current, 10),
            # The sum of the cells as reported, so voltage == sum(cell_voltages) to the mV.
            voltage=min(max(sum(round(v * 1000) for v in self.cell_voltages), 0), 65535) / 1000,
            remaining_capacity=_q(self.remaining_capacity, 1000),
            total_capacity=_q(self.full_capacity, 1000),
            cycle_number=self.cycle_number,
            extended_capacity=self.extended_capacity,
        )

    def alarms(self) -> ModuleAlarms:
        """0x44: per-value states, protections, MOSFET and status flags."""
        p = self.model.parameters
        charging = self.current > 0
        t_low, t_high = (
            (p.charge_low_temperature_limit, p.charge_high_temperature_limit)
            if charging
            else (p.discharge_low_temperature_limit, p.discharge_high_temperature_limit)
        )
        return ModuleAlarms(
            address=self.address,
            cell_states=tuple(
                _state(v, p.cell_low_voltage_limit, p.cell_high_voltage_limit)
                for v in self.cell_voltages
            ),
            temperature_states=tuple(_state(t, t_low, t_high) for t in self.temperatures),
            charge_current_state=(
                AlarmState.HIGH if self.current > p.charge_current_limit else AlarmState.NORMAL
            ),
            voltage_state=_state(
                self.voltage, p.module_low_voltage_limit, p.module_high_voltage_limit
            ),
            discharge_current_state=(
                AlarmState.HIGH
                if -self.current > abs(p.discharge_current_limit)
                else AlarmState.NORMAL
            ),
            protections=self.protections(),
            status=ModuleStatus(
                # Set in every recorded frame, charging, idle or discharging.
                using_battery_power=True,
                discharge_mosfet_on=not self.discharge_blocked(),
                charge_mosfet_on=not self.charge_blocked(),
                effective_charge_current=self.current > EFFECTIVE_CURRENT,
                effective_discharge_current=self.current < -EFFECTIVE_CURRENT,
                fully_charged=self.fully_charged,
                buzzer_on=self.buzzer_on,
            ),
            cell_voltage_errors=self.cell_errors(),
        )

    def management(self) -> ManagementInfo:
        """0x92: the model's limits and the enable / request flags."""
        m = self.model
        soc = self.soc
        return ManagementInfo(
            address=self.address,
            charge_voltage_limit=m.charge_voltage,
            discharge_voltage_limit=m.discharge_voltage,
            charge_current_limit=m.charge_current,
            discharge_current_limit=m.discharge_current,
            charge_enable=not (self.fully_charged or self.charge_blocked()),
            discharge_enable=self.remaining_capacity > 0 and not self.discharge_blocked(),
            charge_immediately_1=soc < CHARGE_IMMEDIATELY_1_SOC,
            charge_immediately_2=soc < CHARGE_IMMEDIATELY_2_SOC,
            full_charge_request=self.seconds_since_full >= FULL_CHARGE_REQUEST_AFTER,
        )

    def serial(self) -> ModuleSerialNumber:
        return ModuleSerialNumber(address=self.address, serial_number=self.serial_number)

    def software(self) -> SoftwareVersion:
        return SoftwareVersion(
            address=self.address,
            manufacturer_version=self.model.manufacturer_version,
            mainline_version=self.model.mainline_version,
        )

    def manufacturer(self) -> ManufacturerInfo:
        return ManufacturerInfo(
            device_name=self.model.device_name,
            software_version=self.model.software_version,
            manufacturer_name=self.model.manufacturer,
        )

    # --- physics --------------------------------------------------------------------

    def step(self, dt: float, demand: float, rng: random.Random) -> None:
        """Advance ``dt`` seconds with the load asking for ``demand`` amperes."""
        cannot_charge = demand > 0 and (self.fully_charged or self.charge_blocked())
        cannot_discharge = demand < 0 and (self.remaining_capacity <= 0 or self.discharge_blocked())
        current = 0.0 if cannot_charge or cannot_discharge else demand
        self.current = current
        delta = current * dt / 3600.0
        self.remaining_capacity = min(max(self.remaining_capacity + delta, 0.0), self.full_capacity)
        if delta < 0:
            self.throughput -= delta
            while self.throughput >= self.full_capacity:
                self.throughput -= self.full_capacity
                self.cycle_number += 1
        self.seconds_since_full = 0.0 if self.soc >= FULL_SOC else self.seconds_since_full + dt
        spread = self.DRIFT_RATE * math.sqrt(dt / 3600.0)
        self.cell_offsets = [off + rng.gauss(0.0, spread) for off in self.cell_offsets]
        self.cell_voltages = self._cell_voltages()
        self._heat(dt)
        # Protections latch like a real BMS: a tripped MOSFET closes again only once the
        # cells are back well inside the limits, not at the first millivolt.
        p = self.model.parameters
        self.charge_latched = self._charge_fault() or (
            self.charge_latched and max(self.cell_voltages) > p.cell_high_voltage_limit - 0.1
        )
        self.discharge_latched = self._discharge_fault() or (
            self.discharge_latched and min(self.cell_voltages) < p.cell_low_voltage_limit
        )

    def _heat(self, dt: float) -> None:
        rise = self.HEATING_PER_C * abs(self.current) / self.model.capacity
        alpha = 1.0 - math.exp(-dt / self.THERMAL_TAU)
        targets = [self.ambient + off + rise for off in self._sensor_offsets]
        targets[0] += 0.5 * rise  # the BMS board warms more than the cells
        if len(targets) > 5:
            targets[5] += 1.5 * rise  # MOSFET
        self.temperatures = [t + (g - t) * alpha for t, g in zip(self.temperatures, targets)]


ModelSpec = Union[str, ModuleModel]


class BatteryStack:
    """One or more groups of virtual modules on one bus.

    ``modules`` is the number of modules per group (all of ``model``) or a list of models
    per group, master first (a mixed stack). ``groups`` is a count or a list of group
    numbers: one group is group 0 (single stack); G > 1 groups are 1..G, because the
    multi-group DIP setting starts at group 1 (spec 2.5.3). ``bank_query_supported``
    overrides the models' setting. All state changes and answers hold ``lock``.
    """

    def __init__(
        self,
        modules: int | Sequence[ModelSpec] = 1,
        groups: int | Sequence[int] = 1,
        model: ModelSpec = "US3000C",
        seed: int = 0,
        bank_query_supported: bool | None = None,
        load: Load | None = None,
        soc: float | None = None,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.faults = FaultPlan(seed)
        self.lock = threading.RLock()
        self.load: Load = load if load is not None else SineLoad()
        self.time = 0.0
        self.frozen = False
        self.bank_query_supported = bank_query_supported
        self._clock: Callable[[], float] | None = None
        self._clock_speed = 1.0
        self._clock_last = 0.0
        specs = [model] * modules if isinstance(modules, int) else list(modules)
        group_numbers = (
            ([0] if groups == 1 else list(range(1, groups + 1)))
            if isinstance(groups, int)
            else list(groups)
        )
        if not specs or not group_numbers:
            raise ValueError("a stack needs at least one module and one group")
        base_soc = soc if soc is not None else self.rng.uniform(0.45, 0.85)
        self._modules: dict[int, VirtualModule] = {}
        for group in group_numbers:
            models = [get_model(s) if isinstance(s, str) else s for s in specs]
            extended = models[0].extended_capacity
            for position, module_model in enumerate(models, start=1):
                address = module_address(group, position)
                digits = "".join(str(self.rng.randrange(10)) for _ in range(11))
                serial = (module_model.serial_prefix + digits)[:16]
                module_soc = min(max(base_soc + self.rng.gauss(0.0, 0.01), 0.0), 1.0)
                module = VirtualModule(
                    module_model, group, address, serial, self.rng, soc=module_soc
                )
                module.extended_capacity = module_model.extended_capacity or extended
                self._modules[address] = module
        self.groups = tuple(group_numbers)

    # --- lookup ---------------------------------------------------------------------

    @property
    def modules(self) -> list[VirtualModule]:
        """Every module (present or not) in address order."""
        return [self._modules[a] for a in sorted(self._modules)]

    def module(self, address: int) -> VirtualModule:
        """The module at ``address`` (present or not); ``KeyError`` if there is none."""
        return self._modules[address]

    def present(self, address: int) -> VirtualModule | None:
        """The module at ``address`` if it exists and is present, else None."""
        module = self._modules.get(address)
        return module if module is not None and module.present else None

    def group_modules(self, group: int) -> list[VirtualModule]:
        """The present modules of ``group`` in address order (a bank-wide answer)."""
        return [m for m in self.modules if m.present and m.group == group]

    def group_of(self, address: int) -> int:
        """Group of the module at ``address`` (not ``address >> 4``: n may exceed 15)."""
        return self._modules[address].group

    def master(self, group: int) -> VirtualModule:
        return self._modules[master_address(group)]

    def supports_bank_query(self, group: int) -> bool:
        if self.bank_query_supported is not None:
            return self.bank_query_supported
        return self.master(group).model.bank_query_supported

    def remove_module(self, address: int) -> None:
        """Unplug a module: silent at its address and missing from bank-wide answers."""
        self._modules[address].present = False

    def restore_module(self, address: int) -> None:
        self._modules[address].present = True

    # --- time -----------------------------------------------------------------------

    def freeze(self) -> None:
        """Stop time: :meth:`advance` changes nothing, so values set by hand stay exact."""
        self.frozen = True

    def unfreeze(self) -> None:
        self.frozen = False

    def set_current(self, amperes: float) -> None:
        """Make every module carry ``amperes`` (+ charging) from now on. Unless frozen, the
        cells also take the new current's voltage drop at once."""
        self.load = ConstantCurrent(amperes)
        with self.lock:
            for module in self.modules:
                module.current = amperes
                if not self.frozen:
                    module.settle()

    def advance(self, seconds: float) -> None:
        """Move simulated time forward by ``seconds`` (no-op while frozen)."""
        if seconds <= 0 or self.frozen:
            return
        with self.lock:
            steps = max(1, math.ceil(seconds / MAX_STEP))
            dt = seconds / steps
            for _ in range(steps):
                self.time += dt
                for module in self.modules:
                    module.step(dt, self.load(self.time, module, self.rng), self.rng)

    def follow_clock(self, speed: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        """Wall-clock mode: each :meth:`sync` advances by the elapsed time times ``speed``.
        The servers call :meth:`sync` before every answer."""
        self._clock, self._clock_speed, self._clock_last = clock, speed, clock()

    def sync(self) -> None:
        """Catch up with the wall clock (no-op unless :meth:`follow_clock` was called)."""
        if self._clock is None:
            return
        with self.lock:  # two servers on one stack must not both advance the same interval
            now = self._clock()
            elapsed, self._clock_last = now - self._clock_last, now
            self.advance(elapsed * self._clock_speed)
