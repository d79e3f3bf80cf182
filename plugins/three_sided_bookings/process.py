"""The booking process as data: states, transitions, actors, guards, timers and actions.

Modelled on Sharetribe's transaction processes: a booking is always in one
state; it moves only along a transition named in the process, taken by an
allowed actor (``customer``, ``provider``, ``venue``, ``admin`` or ``system``),
when every guard holds. A transition runs its actions (charge, capture,
refund, settle ...) in order; a timed transition is taken by the system once
its time has come (``timer``). Several transitions may share a name: the first
whose actor and guards match is taken (``pay`` goes to ``paid``,
``deposit_paid``, ``authorized`` or ``card_saved`` depending on the payment model).

Everything here is pure. Guards are evaluated over :class:`Facts`; actions are
names implemented by :mod:`plugins.three_sided_bookings.actions`. An operator can
replace the process in config; :meth:`ProcessSpec.check` refuses unknown
states, actions, guards or actors at start-up, naming the key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Literal

import msgspec

from engine.core.errors import ConfigError, IllegalTransition

__all__ = [
    "ACTIONS",
    "ACTORS",
    "ANY_STATE",
    "DEFAULT_PROCESS",
    "GUARDS",
    "PREVIOUS_STATE",
    "SAME_STATE",
    "Actor",
    "Facts",
    "ProcessSpec",
    "StateSpec",
    "Timer",
    "TransitionSpec",
    "guard_holds",
]

Actor = Literal["customer", "provider", "venue", "admin", "system"]
ACTORS: Final[tuple[str, ...]] = ("customer", "provider", "venue", "admin", "system")

ANY_STATE: Final = "*"
"""In ``from``: every non-terminal state."""

PREVIOUS_STATE: Final = "@previous"
SAME_STATE: Final = "@same"
"""A transition's ``to`` that keeps the booking in the state it is in."""
"""As ``to``: the state the booking was in before it entered the current one."""

ACTIONS: Final[frozenset[str]] = frozenset(
    {
        "charge_in_full",  # one automatic-capture charge of the whole value
        "charge_deposit",  # the deposit now, card saved for the balance
        "secure_payment_on_arrival",  # authorise (or save the card when far away)
        "collect_payment",  # collect everything due: balance, capture, off-session charge
        "apply_cancellation_policy",  # keep the policy's fee, refund or release the rest
        "refund_in_full",  # refund everything, release any authorisation
        "charge_no_show_fee",  # keep (or collect) the no-show fee
        "refund_amount",  # refund the requested amount, reversing shares proportionally
        "settle",  # one transfer per beneficiary and charge (held when it cannot receive)
        "record_dispute",  # remember the dispute; submit evidence if configured
        "submit_dispute_evidence",  # assemble the evidence from the booking and submit it
        "record_dispute_outcome",  # post the outcome; reverse shares on a loss if configured
        "replace_saved_card",  # save a new card for what is charged later
        "record_stripe_refund",  # take in a refund made in Stripe (moves no money)
    }
)
"""Action names a process may use (implemented in ``actions.py``)."""


@dataclass(frozen=True, slots=True)
class Facts:
    """What guards may look at: the booking, the clock and the request.

    Attributes:
        now: the time of the attempt.
        starts_at / ends_at: the service's time.
        payment_model: ``full``, ``deposit`` or ``arrival``.
        collected: money captured and not refunded, in minor units.
        requested_amount: the amount the request names (a refund), if any.
        grace: how early before the start a service counts as started.
        hold_horizon: how far ahead a card can be authorised (``off_session_after_days``):
            an authorisation lapses after 7 days, so a later service only saves the card.
    """

    now: datetime
    starts_at: datetime
    ends_at: datetime
    payment_model: str
    collected: int = 0
    requested_amount: int | None = None
    grace: timedelta = timedelta(0)
    hold_horizon: timedelta = timedelta(days=6)


def _payment_model(facts: Facts, argument: str) -> bool:
    return facts.payment_model == argument


def _before_start(facts: Facts, _: str) -> bool:
    return facts.now < facts.starts_at


def _within_hold_horizon(facts: Facts, _: str) -> bool:
    return facts.starts_at - facts.now <= facts.hold_horizon


def _beyond_hold_horizon(facts: Facts, _: str) -> bool:
    return facts.starts_at - facts.now > facts.hold_horizon


def _service_started(facts: Facts, _: str) -> bool:
    return facts.now >= facts.starts_at - facts.grace


def _partial_refund(facts: Facts, _: str) -> bool:
    amount = facts.requested_amount
    return amount is not None and 0 < amount < facts.collected


def _full_refund(facts: Facts, _: str) -> bool:
    amount = facts.requested_amount
    return facts.collected > 0 and (amount is None or amount == facts.collected)


GUARDS: Final[Mapping[str, Callable[[Facts, str], bool]]] = {
    "payment_model": _payment_model,  # payment_model:full|deposit|arrival
    "before_start": _before_start,
    "within_hold_horizon": _within_hold_horizon,  # the card can be authorised now
    "beyond_hold_horizon": _beyond_hold_horizon,  # too far ahead: only the card is saved
    "service_started": _service_started,  # now >= start - start_grace_minutes
    "partial_refund": _partial_refund,  # 0 < requested amount < collected
    "full_refund": _full_refund,  # no amount, or exactly what was collected
}
"""Guard names a process may use; ``name:argument`` passes an argument."""

_PARAMETRISED: Final = frozenset({"payment_model"})


def guard_holds(guard: str, facts: Facts) -> bool:
    """Evaluate one guard (``"before_start"``, ``"payment_model:deposit"``)."""
    name, _, argument = guard.partition(":")
    return GUARDS[name](facts, argument)


class Timer(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """When a timed transition is due: an anchor time plus an offset (may be negative).

    ``anchor`` is ``entered`` (when the booking entered its current state),
    ``created``, ``starts`` or ``ends`` (the service's times).
    """

    anchor: Literal["entered", "created", "starts", "ends"] = "entered"
    offset_minutes: int = 0

    def due(
        self, *, entered: datetime, created: datetime, starts: datetime, ends: datetime
    ) -> datetime:
        """The moment the transition becomes due."""
        base = {"entered": entered, "created": created, "starts": starts, "ends": ends}
        return base[self.anchor] + timedelta(minutes=self.offset_minutes)


class StateSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One state; a ``terminal`` state is left only by transitions naming it explicitly."""

    name: str
    terminal: bool = False
    description: str = ""


class TransitionSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One transition (see the module docstring).

    Attributes:
        name: the action name clients use (``confirm``, ``cancel`` ...).
        from_: states it leaves (``"*"`` = every non-terminal state); ``from`` in config.
        to: the state it enters, or ``"@previous"``.
        actors: who may take it.
        guards: conditions that must all hold (names from ``GUARDS``).
        actions: what it does, in order (names from ``ACTIONS``).
        timer: makes it a timed transition, taken by ``system`` when due.
    """

    name: str
    from_: list[str] = msgspec.field(name="from")
    to: str
    actors: list[str]
    guards: list[str] = msgspec.field(default_factory=list)
    actions: list[str] = msgspec.field(default_factory=list)
    timer: Timer | None = None
    description: str = ""

    def leaves(self, state: str, terminal: frozenset[str]) -> bool:
        """Whether this transition may start in ``state``."""
        if state in self.from_:
            return True
        return ANY_STATE in self.from_ and state not in terminal

    def holds(self, facts: Facts) -> list[str]:
        """The guards that fail for ``facts`` (empty: the transition may be taken)."""
        return [guard for guard in self.guards if not guard_holds(guard, facts)]


class ProcessSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A whole booking process. Call :meth:`check` (the config does) before use."""

    name: str
    version: int = 1
    initial: str
    states: list[StateSpec]
    transitions: list[TransitionSpec]

    # ------------------------------------------------------------ validation

    def check(self, key: str = "process") -> None:
        """Refuse an inconsistent process (raises ``ConfigError`` naming the key)."""
        names = [state.name for state in self.states]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise ConfigError(f"{key}.states[{index}].name", f"{name!r} is listed twice")
        known = set(names)
        if self.initial not in known:
            raise ConfigError(f"{key}.initial", f"unknown state {self.initial!r}")
        for index, transition in enumerate(self.transitions):
            where = f"{key}.transitions[{index}]"
            self._check_transition(transition, where, known)

    @staticmethod
    def _check_transition(transition: TransitionSpec, where: str, known: set[str]) -> None:
        if not transition.name.isidentifier():
            raise ConfigError(f"{where}.name", f"{transition.name!r} is not an identifier")
        if not transition.from_:
            raise ConfigError(f"{where}.from", "names no state")
        for state in transition.from_:
            if state != ANY_STATE and state not in known:
                raise ConfigError(f"{where}.from", f"unknown state {state!r}")
        if transition.to not in {PREVIOUS_STATE, SAME_STATE} and transition.to not in known:
            raise ConfigError(f"{where}.to", f"unknown state {transition.to!r}")
        if not transition.actors:
            raise ConfigError(f"{where}.actors", "names no actor")
        for actor in transition.actors:
            if actor not in ACTORS:
                raise ConfigError(
                    f"{where}.actors", f"unknown actor {actor!r} (one of {', '.join(ACTORS)})"
                )
        if transition.timer is not None and transition.actors != ["system"]:
            raise ConfigError(f"{where}.actors", "a timed transition is taken by system only")
        for guard in transition.guards:
            name, _, argument = guard.partition(":")
            if name not in GUARDS or (name in _PARAMETRISED) != bool(argument):
                raise ConfigError(f"{where}.guards", f"unknown guard {guard!r}")
        for action in transition.actions:
            if action not in ACTIONS:
                raise ConfigError(f"{where}.actions", f"unknown action {action!r}")

    # ------------------------------------------------------------ queries

    @property
    def terminal_states(self) -> frozenset[str]:
        """States only explicit transitions leave."""
        return frozenset(state.name for state in self.states if state.terminal)

    def allowed(self, state: str, actor: str | None = None) -> list[str]:
        """Names of the untimed transitions out of ``state`` (for ``actor``, if given)."""
        terminal = self.terminal_states
        return sorted(
            {
                transition.name
                for transition in self.transitions
                if transition.timer is None
                and transition.leaves(state, terminal)
                and (actor is None or actor in transition.actors)
            }
        )

    def timed(self, state: str) -> list[TransitionSpec]:
        """The timed transitions out of ``state``, in process order."""
        terminal = self.terminal_states
        return [t for t in self.transitions if t.timer is not None and t.leaves(state, terminal)]

    def resolve(self, name: str, state: str, actor: str, facts: Facts) -> TransitionSpec:
        """The transition ``actor`` takes by ``name`` from ``state``.

        Raises:
            IllegalTransition: no such transition from ``state`` for ``actor``, or
                its guards fail; carries ``state`` and the ``allowed`` names.
        """
        terminal = self.terminal_states
        candidates = [
            transition
            for transition in self.transitions
            if transition.name == name
            and transition.leaves(state, terminal)
            and actor in transition.actors
        ]
        allowed = self.allowed(state, actor)
        if not candidates:
            raise IllegalTransition(
                f"{actor} cannot {name} a booking that is {state}", state=state, allowed=allowed
            )
        failures: list[str] = []
        for transition in candidates:
            failed = transition.holds(facts)
            if not failed:
                return transition
            failures += failed
        raise IllegalTransition(
            f"cannot {name} a booking that is {state}: {', '.join(dict.fromkeys(failures))} "
            "does not hold",
            state=state,
            allowed=allowed,
        )


def _t(
    name: str,
    from_: list[str],
    to: str,
    actors: list[str],
    *,
    guards: list[str] | None = None,
    actions: list[str] | None = None,
    timer: Timer | None = None,
    description: str = "",
) -> TransitionSpec:
    return TransitionSpec(
        name=name,
        from_=from_,
        to=to,
        actors=actors,
        guards=guards or [],
        actions=actions or [],
        timer=timer,
        description=description,
    )


_PAID = ["paid", "deposit_paid", "authorized", "card_saved"]
_BUSINESS = ["provider", "venue", "admin"]
_UNSETTLED = [*_PAID, "confirmed", "completed", "no_show"]

DEFAULT_PROCESS: Final = ProcessSpec(
    name="spa-booking",
    version=1,
    initial="pending_payment",
    states=[
        StateSpec(name="pending_payment", description="created, not paid yet"),
        StateSpec(name="paid", description="paid in full at booking"),
        StateSpec(name="deposit_paid", description="deposit charged, card saved for the balance"),
        StateSpec(name="authorized", description="pay on arrival: the amount is held on the card"),
        StateSpec(
            name="card_saved",
            description="pay on arrival, far ahead: card saved, nothing held; charged at the end",
        ),
        StateSpec(name="confirmed", description="the provider or venue accepted"),
        StateSpec(name="completed", description="service delivered, everything collected"),
        StateSpec(name="no_show", description="the customer did not come; the fee collected"),
        StateSpec(name="settled", description="provider and venue paid (or their share held)"),
        StateSpec(name="partially_refunded", description="part refunded after settlement"),
        StateSpec(name="refunded", terminal=True, description="everything refunded"),
        StateSpec(name="cancelled", terminal=True, description="cancelled per policy"),
        StateSpec(name="disputed", description="the customer's bank opened a dispute"),
        StateSpec(name="dispute_lost", terminal=True, description="the dispute was lost"),
    ],
    transitions=[
        _t("pay", ["pending_payment"], "paid", ["customer", "system"],
           guards=["payment_model:full"], actions=["charge_in_full"]),
        _t("pay", ["pending_payment"], "deposit_paid", ["customer", "system"],
           guards=["payment_model:deposit"], actions=["charge_deposit"]),
        _t("pay", ["pending_payment"], "authorized", ["customer", "system"],
           guards=["payment_model:arrival", "within_hold_horizon"],
           actions=["secure_payment_on_arrival"]),
        _t("pay", ["pending_payment"], "card_saved", ["customer", "system"],
           guards=["payment_model:arrival", "beyond_hold_horizon"],
           actions=["secure_payment_on_arrival"]),
        _t("update_card", ["deposit_paid", "card_saved", "confirmed"], SAME_STATE, ["customer"],
           actions=["replace_saved_card"],
           description="a new card for the balance or the arrival charge"),
        _t("expire", ["pending_payment"], "cancelled", ["system"],
           timer=Timer(anchor="entered", offset_minutes=30),
           description="unpaid bookings lapse after 30 minutes"),
        _t("confirm", _PAID, "confirmed", _BUSINESS),
        _t("complete", ["confirmed"], "completed", ["provider", "venue"],
           guards=["service_started"], actions=["collect_payment"]),
        _t("complete", ["confirmed"], "completed", ["admin"], actions=["collect_payment"],
           description="operators may complete early"),
        _t("auto_complete", ["confirmed"], "completed", ["system"],
           actions=["collect_payment"], timer=Timer(anchor="ends", offset_minutes=24 * 60),
           description="a day after the service ends"),
        _t("no_show", ["confirmed"], "no_show", ["provider", "venue"],
           guards=["service_started"], actions=["charge_no_show_fee"]),
        _t("no_show", ["confirmed"], "no_show", ["admin"], actions=["charge_no_show_fee"]),
        _t("settle", ["completed", "no_show"], "settled", ["system"], actions=["settle"],
           timer=Timer(anchor="entered", offset_minutes=0)),
        _t("settle", ["completed", "no_show"], "settled", ["admin"], actions=["settle"],
           description="retry a settlement that failed"),
        _t("cancel", ["pending_payment", *_PAID, "confirmed"], "cancelled", ["customer"],
           actions=["apply_cancellation_policy", "settle"],
           description="the customer cancels: the policy's fee is kept and split"),
        _t("cancel", ["pending_payment", *_PAID, "confirmed"], "cancelled", _BUSINESS,
           actions=["refund_in_full"], description="the business cancels: full refund"),
        _t("refund", ["settled", "partially_refunded"], "partially_refunded", _BUSINESS,
           guards=["partial_refund"], actions=["refund_amount"]),
        _t("refund", ["settled", "partially_refunded"], "refunded", _BUSINESS,
           guards=["full_refund"], actions=["refund_amount"]),
        _t("refunded_in_stripe", ["settled", "partially_refunded"], "partially_refunded",
           ["system"], guards=["partial_refund"], actions=["record_stripe_refund"],
           description="part refunded in Stripe's dashboard: as a partial refund"),
        _t("refunded_in_stripe", [*_UNSETTLED, "settled", "partially_refunded"], "refunded",
           ["system"], guards=["full_refund"], actions=["record_stripe_refund"],
           description="everything left refunded in Stripe's dashboard: as a full refund"),
        _t("refunded_in_stripe", _UNSETTLED, SAME_STATE, ["system"],
           guards=["partial_refund"], actions=["record_stripe_refund"],
           description="part refunded in Stripe before settlement: recorded, state kept"),
        _t("dispute_opened", [ANY_STATE, "refunded", "cancelled"], "disputed", ["system"],
           actions=["record_dispute"]),
        _t("submit_evidence", ["disputed"], "disputed", ["admin"],
           actions=["submit_dispute_evidence"]),
        _t("dispute_won", ["disputed"], PREVIOUS_STATE, ["system"],
           actions=["record_dispute_outcome"]),
        _t("dispute_lost", ["disputed"], "dispute_lost", ["system"],
           actions=["record_dispute_outcome"]),
    ],
)  # fmt: skip
"""The spa process: pay -> confirm -> complete -> settle, with cancel, refund, dispute."""
