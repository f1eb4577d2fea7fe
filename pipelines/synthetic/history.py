"""One synthetic person's medical history, independent of any source format.

The FHIR and openEHR writers render the same history, so the clinical logic lives once: a person has
their own levels (blood pressure, weight, cholesterol ...), chronic conditions that shift those levels
and bring treatment and monitoring, short illnesses that bring extra visits, vaccines when due, and
sometimes a death. Every draw comes from a ``random.Random`` seeded by (seed, stream, index), so a
person is the same whatever the batch size or the number of people generated around them.
"""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
import math
import random
from dataclasses import dataclass, field

from pipelines.synthetic.catalogue import Catalogue, Condition, Quantity

# RFC 4122 version 4: version nibble 0100 (bits 76-79), variant 10 (bits 62-63)
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


@dataclass(slots=True)
class Measurement:
    id: str
    quantity: Quantity
    value: float


@dataclass(slots=True)
class BloodPressure:
    id: str
    systolic: float
    diastolic: float


@dataclass(slots=True)
class Diagnosis:
    id: str
    condition: Condition
    onset: dt.date
    recorded: dt.datetime
    abatement: dt.date | None  # acute illnesses end; chronic ones stay active


@dataclass(slots=True)
class Prescription:
    id: str
    rxnorm: str
    display: str
    authored: dt.datetime
    days_supply: int
    reason: Diagnosis


@dataclass(slots=True)
class ProcedureDone:
    id: str
    code: str
    display: str
    performed: dt.datetime


@dataclass(slots=True)
class Vaccination:
    id: str
    cvx: str
    display: str
    given: dt.datetime


@dataclass(slots=True)
class Visit:
    id: str
    visit_class: str  # HL7 v3 ActCode: AMB, EMER, IMP
    visit_type: tuple[str, str]  # SNOMED code, display
    start: dt.datetime
    end: dt.datetime
    reason: Diagnosis | None = None
    vitals: list[Measurement] = field(default_factory=list)
    blood_pressure: BloodPressure | None = None
    labs: list[Measurement] = field(default_factory=list)
    diagnoses: list[Diagnosis] = field(default_factory=list)
    prescriptions: list[Prescription] = field(default_factory=list)
    procedures: list[ProcedureDone] = field(default_factory=list)
    vaccinations: list[Vaccination] = field(default_factory=list)


@dataclass(slots=True)
class PatientHistory:
    id: str
    sex: str  # FHIR administrative gender: female, male
    birth_date: dt.date
    deceased: dt.datetime | None
    visits: list[Visit]


def simulate(catalogue: Catalogue, seed: int, stream: str, index: int) -> PatientHistory:
    """The history of person ``index`` of ``stream`` (e.g. "bundle", "bulk", "openehr")."""
    return _Simulation(catalogue, random.Random(f"passerelle:{seed}:{stream}:{index}")).run()


class _Simulation:
    def __init__(self, catalogue: Catalogue, rng: random.Random) -> None:
        self.cat = catalogue
        self.rng = rng

    def new_id(self) -> str:
        """A random (version 4) UUID from the seeded generator; what ``uuid.UUID(int=n, version=4)``
        gives, written out directly because it is called for every record."""
        n = (self.rng.getrandbits(128) & _UUID4_CLEAR) | _UUID4_SET
        h = f"{n:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def run(self) -> PatientHistory:
        cat, rng = self.cat, self.rng
        population = cat.population
        self.id = self.new_id()
        self.sex = "female" if rng.random() < population["female_share"] else "male"
        band = rng.choices(population["age_bands"], weights=[b[2] for b in population["age_bands"]])[0]
        age_days = int((band[0] + rng.random() * (band[1] - band[0] + 1)) * 365.25)
        self.birth = cat.as_of - dt.timedelta(days=age_days)
        death_chance = next(c for lo, hi, c in population["death_chance"] if lo <= age_days / 365.25 < hi + 1)
        self.start = max(self.birth, cat.as_of - dt.timedelta(days=round(cat.history_years * 365.25)))
        self.end = cat.as_of
        deceased = None
        if rng.random() < death_chance:
            day = self.start + dt.timedelta(days=rng.randrange(max(1, (self.end - self.start).days)))
            deceased = _at(day, rng.randrange(24), rng.randrange(60))
            self.end = day

        self._person_levels()
        self._chronic_onsets()
        visits = self._checkups() + self._illnesses()
        visits.sort(key=lambda v: v.start)
        visits = [v for v in visits if deceased is None or v.end <= deceased]
        self._record_chronic(visits)
        return PatientHistory(self.id, self.sex, self.birth, deceased, visits)

    # --- the person -------------------------------------------------------------------------------
    def _person_levels(self) -> None:
        """A person's own level of each quantity: visits scatter around it, conditions shift it."""
        rng, pop = self.rng, self.cat.population
        mean, sd = pop["adult_height_cm"][self.sex]
        self.adult_height = rng.gauss(mean, sd)
        self.adult_bmi = _clip(rng.gauss(*pop["adult_bmi"]), 17, 48)
        self.child_bmi = _clip(rng.gauss(*pop["child_bmi"]), 13, 24)
        self.level = {
            q.name: rng.gauss(*q.usual)
            for q in (*self.cat.vitals.values(), *self.cat.labs.values())
            if q.usual is not None
        }
        self.last_vaccine: dict[str, dt.date] = {}

    def age_at(self, day: dt.date) -> float:
        return (day - self.birth).days / 365.25

    def _chronic_onsets(self) -> None:
        rng = self.rng
        age_end = self.age_at(self.end)
        self.chronic: list[tuple[Condition, dt.date, str]] = []  # condition, onset, chosen drug
        for condition in self.cat.chronic:
            steps = [c for age, c in condition.prevalence if age <= age_end]
            if not steps or rng.random() >= steps[-1]:
                continue
            from_day = self.birth + dt.timedelta(days=round(condition.prevalence[0][0] * 365.25))
            span = max(1, (self.end - from_day).days)
            onset = from_day + dt.timedelta(days=rng.randrange(span))
            drug = rng.choice(condition.treatment) if condition.treatment else ""
            self.chronic.append((condition, onset, drug))

    def active_chronic(self, day: dt.date) -> list[tuple[Condition, dt.date, str]]:
        return [entry for entry in self.chronic if entry[1] <= day]

    # --- visits ------------------------------------------------------------------------------------
    def _checkups(self) -> list[Visit]:
        cat, rng = self.cat, self.rng
        healthy, per_condition = cat.visits_per_year
        visits = []
        day = self.start + dt.timedelta(days=rng.randrange(120))
        last_labs: dt.date | None = None
        while day < self.end:
            visit = self._visit("AMB", cat.visit_types["checkup"], day)
            active = self.active_chronic(day)
            self._measure_vitals(visit, day, active, {})
            labs: set[str] = set()
            if self.age_at(day) >= cat.checkup_labs_from_age and (
                last_labs is None or (day - last_labs).days > 330
            ):
                labs.update(cat.checkup_labs)
                last_labs = day
            for condition, _, _ in active:
                labs.update(condition.monitor)
            self._draw_labs(visit, sorted(labs), active, {})
            routine = cat.checkup_procedures
            self._procedure(visit, routine["adult"] if self.age_at(day) >= 18 else routine["child"])
            if any(drug for _, _, drug in active):
                self._procedure(visit, routine["on_treatment"])
            self._screening(visit, day)
            self._vaccinate(visit, day)
            visits.append(visit)
            rate = healthy + per_condition * len(active)
            day += dt.timedelta(days=max(14, round(rng.expovariate(rate) * 365.25)))
        return visits

    def _illnesses(self) -> list[Visit]:
        cat, rng = self.cat, self.rng
        years = (self.end - self.start).days / 365.25
        visits = []
        for _ in range(_poisson(rng, years * cat.acute_per_year)):
            day = self.start + dt.timedelta(days=rng.randrange(max(1, (self.end - self.start).days)))
            age = self.age_at(day)
            eligible = [c for c in cat.acute if c.ages[0] <= age <= c.ages[1]]
            if not eligible:
                continue
            condition = rng.choices(eligible, weights=[c.weight for c in eligible])[0]
            visit_type = {"AMB": "symptom", "EMER": "emergency", "IMP": "admission"}[condition.visit]
            visit = self._visit(condition.visit, cat.visit_types[visit_type], day)
            diagnosis = Diagnosis(
                self.new_id(), condition, day, visit.start, day + dt.timedelta(days=condition.days)
            )
            visit.reason = diagnosis
            visit.diagnoses.append(diagnosis)
            active = self.active_chronic(day)
            self._measure_vitals(visit, day, active, condition.shifts)
            self._draw_labs(visit, list(condition.monitor), active, condition.shifts)
            for name in condition.procedures:
                self._procedure(visit, name)
            if condition.treatment:
                self._prescribe(visit, rng.choice(condition.treatment), diagnosis)
            visits.append(visit)
        return visits

    def _visit(self, visit_class: str, visit_type: tuple[str, str], day: dt.date) -> Visit:
        rng = self.rng
        low, high = self.cat.visit_classes[visit_class]["hours"]
        hour = rng.randrange(8, 18) if visit_class == "AMB" else rng.randrange(24)
        start = _at(day, hour, rng.randrange(0, 60, 5))
        end = start + dt.timedelta(minutes=round(rng.uniform(low, high) * 60))
        return Visit(self.new_id(), visit_class, visit_type, start, end)

    # --- what happens during a visit ---------------------------------------------------------------
    def _measure_vitals(self, visit: Visit, day: dt.date, active, acute_shifts: dict[str, float]) -> None:
        cat, rng = self.cat, self.rng
        age = self.age_at(day)
        child = cat.child_vitals
        values: dict[str, float] = {}
        for name in ("systolic", "diastolic", "heart_rate", "respiratory_rate", "temperature", "spo2"):
            quantity = cat.vitals[name]
            level = self.level[name]
            if age < child["below_age"]:
                level *= child["factors"].get(name, 1.0)
            values[name] = self._value(quantity, level, active, acute_shifts, day)
        values["diastolic"] = min(values["diastolic"], values["systolic"] - cat.min_pulse_pressure)
        height = self.adult_height * _growth(cat.population["growth_fraction"], age)
        bmi = self.child_bmi + (self.adult_bmi - self.child_bmi) * _clip((age - 10) / 10, 0.0, 1.0)
        weight = bmi * (height / 100) ** 2 * rng.gauss(1.0, 0.015)
        values["height"] = round(height, cat.vitals["height"].decimals)
        values["weight"] = round(weight, cat.vitals["weight"].decimals)
        values["bmi"] = round(weight / (height / 100) ** 2, cat.vitals["bmi"].decimals)
        visit.blood_pressure = BloodPressure(self.new_id(), values.pop("systolic"), values.pop("diastolic"))
        visit.vitals = [Measurement(self.new_id(), cat.vitals[name], value) for name, value in values.items()]

    def _draw_labs(self, visit: Visit, names: list[str], active, acute_shifts: dict[str, float]) -> None:
        if not names:
            return
        for name in names:
            quantity = self.cat.labs[name]
            value = self._value(quantity, self.level[name], active, acute_shifts, visit.start.date())
            visit.labs.append(Measurement(self.new_id(), quantity, value))

    def _value(self, quantity: Quantity, level: float, active, acute_shifts, day: dt.date) -> float:
        """Own level + condition shifts (halved once treated) + visit-to-visit noise, within bounds."""
        for condition, onset, drug in active:
            shift = condition.shifts.get(quantity.name, 0.0)
            treated = drug and (day - onset).days > 60
            level += shift / 2 if treated else shift
        level += acute_shifts.get(quantity.name, 0.0)
        noise = quantity.visit_sd or (quantity.usual[1] * 0.3 if quantity.usual else 0.0)
        value = self.rng.gauss(level, noise)
        low, high = quantity.bounds or (0.0, math.inf)
        value = _clip(value, low, high)
        # a lab result of zero reads as "not measured"; keep the smallest reportable positive value
        return max(round(value, quantity.decimals), 10**-quantity.decimals)

    def _screening(self, visit: Visit, day: dt.date) -> None:
        age = self.age_at(day)
        for name, sex, from_age, chance in self.cat.screening:
            if sex in ("any", self.sex) and age >= from_age and self.rng.random() < chance:
                self._procedure(visit, name)

    def _vaccinate(self, visit: Visit, day: dt.date) -> None:
        cat, rng = self.cat, self.rng
        age = self.age_at(day)
        for cvx, (display, from_age, to_age, every) in cat.immunizations.items():
            if not from_age <= age <= to_age:
                continue
            last = self.last_vaccine.get(cvx)
            due = last is None or (every and (day - last).days >= every * 365 - 30)
            if due and rng.random() < cat.immunization_uptake:
                visit.vaccinations.append(Vaccination(self.new_id(), cvx, display, visit.start))
                self.last_vaccine[cvx] = day

    def _procedure(self, visit: Visit, name: str) -> None:
        code, display = self.cat.procedures[name]
        visit.procedures.append(ProcedureDone(self.new_id(), code, display, visit.start))

    def _prescribe(self, visit: Visit, rxnorm: str, reason: Diagnosis) -> None:
        display, days = self.cat.medications[rxnorm]
        visit.prescriptions.append(Prescription(self.new_id(), rxnorm, display, visit.start, days, reason))

    def _record_chronic(self, visits: list[Visit]) -> None:
        """A chronic condition is diagnosed at the first check-up on or after its onset, then its drug
        is renewed and its follow-up procedures done at the check-ups after that."""
        checkups = [v for v in visits if v.visit_class == "AMB" and v.reason is None]
        starts = [v.start.date() for v in checkups]
        for condition, onset, drug in self.chronic:
            first = bisect.bisect_left(starts, onset)
            if first == len(checkups):
                continue  # began after the last visit: not known to any record yet
            visit = checkups[first]
            diagnosis = Diagnosis(self.new_id(), condition, onset, visit.start, None)
            visit.diagnoses.append(diagnosis)
            for name in condition.procedures:
                self._procedure(visit, name)
            if drug:
                for follow_up in checkups[first:]:
                    self._prescribe(follow_up, drug, diagnosis)


def _at(day: dt.date, hour: int, minute: int) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=dt.UTC)


def _clip(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


def _growth(curve: list[list[float]], age: float) -> float:
    """Fraction of adult height at ``age``, linear between the curve's points."""
    if age >= curve[-1][0]:
        return curve[-1][1]
    for (age0, f0), (age1, f1) in itertools.pairwise(curve):
        if age0 <= age < age1:
            return f0 + (f1 - f0) * (age - age0) / (age1 - age0)
    return curve[0][1]


def _poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method; means here are small (a few illnesses per person)."""
    limit, count, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count
