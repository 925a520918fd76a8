"""Everything the simulator remembers, in memory: configuration, windows, faults, throughput and logs."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from waflow_simulator.ids import conversation_id
from waflow_simulator.models import App, DeliveryRecord, FaultRequest, Number, SentMessage
from waflow_simulator.templates import TemplateStore

WINDOW_SECONDS = 24 * 3600
CONVERSATION_SECONDS = 24 * 3600


class NotConfigured(LookupError):
    """A control or Graph call names an app or number the simulator was not given."""


@dataclass(slots=True)
class Fault:
    code: int | None
    http_status: int | None
    delay_seconds: float
    remaining: int

    @property
    def fails(self) -> bool:
        return self.code is not None or self.http_status is not None


class SimState:
    def __init__(self, max_log_entries: int) -> None:
        self.apps: dict[str, App] = {}
        self.numbers: dict[str, Number] = {}
        self.templates = TemplateStore()
        self.sent: deque[SentMessage] = deque(maxlen=max_log_entries)
        self.deliveries: deque[DeliveryRecord] = deque(maxlen=max_log_entries)
        self.undeliverable: set[str] = set()
        self._windows: dict[tuple[str, str], float] = {}
        self._faults: dict[str, deque[Fault]] = {}
        self._throughput: dict[str, deque[float]] = {}
        self._conversations: dict[tuple[str, str, str], tuple[str, int]] = {}

    def app(self, app_id: str) -> App:
        app = self.apps.get(app_id)
        if app is None:
            raise NotConfigured(f"app {app_id} is not configured (PUT /_sim/apps/{app_id})")
        return app

    def number(self, phone_number_id: str) -> Number:
        number = self.numbers.get(phone_number_id)
        if number is None:
            raise NotConfigured(
                f"phone number {phone_number_id} is not configured (PUT /_sim/numbers/{phone_number_id})"
            )
        return number

    def reset(self) -> None:
        """Forget all traffic and test knobs; apps and numbers stay configured."""
        self.templates.clear()
        self.sent.clear()
        self.deliveries.clear()
        self.undeliverable.clear()
        self._windows.clear()
        self._faults.clear()
        self._throughput.clear()
        self._conversations.clear()

    def open_window(self, phone_number_id: str, wa_id: str, timestamp: float) -> None:
        # Out-of-order customer messages must not shorten a window a later message already extended.
        key = (phone_number_id, wa_id)
        if timestamp > self._windows.get(key, float("-inf")):
            self._windows[key] = timestamp

    def window_open(self, phone_number_id: str, wa_id: str, now: float) -> bool:
        opened = self._windows.get((phone_number_id, wa_id))
        return opened is not None and now < opened + WINDOW_SECONDS

    def close_window(self, phone_number_id: str, wa_id: str) -> None:
        self._windows.pop((phone_number_id, wa_id), None)

    def add_fault(self, request: FaultRequest) -> None:
        fault = Fault(request.code, request.http_status, request.delay_seconds, request.count)
        self._faults.setdefault(request.phone_number_id, deque()).append(fault)

    def take_fault(self, phone_number_id: str) -> Fault | None:
        queue = self._faults.get(phone_number_id)
        if not queue:
            return None
        fault = queue[0]
        fault.remaining -= 1
        if fault.remaining <= 0:
            queue.popleft()
        return fault

    def admit(self, phone_number_id: str, per_second: int, now: float) -> bool:
        """Sliding one-second window of admitted sends per number."""
        recent = self._throughput.get(phone_number_id)
        if recent is None:
            recent = self._throughput[phone_number_id] = deque()
        while recent and recent[0] <= now - 1.0:
            recent.popleft()
        if len(recent) >= per_second:
            return False
        recent.append(now)
        return True

    def conversation(self, phone_number_id: str, wa_id: str, category: str, now: float) -> tuple[str, int]:
        """(id, expiration) of the pricing conversation a message falls in, opening one when none is live."""
        key = (phone_number_id, wa_id, category)
        current = self._conversations.get(key)
        if current is None or current[1] <= now:
            current = self._conversations[key] = (conversation_id(), int(now) + CONVERSATION_SECONDS)
        return current
