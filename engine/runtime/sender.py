"""Sending one request to its end, by the sink's verdicts; and the run's stop control.

The ``Sender`` is the only place requests meet the network. For each request it waits for
the rate limiter (every limit the sink declares, by what each counts), sends it, asks the sink
what the answer means (``Sink.classify`` -> a verdict, engine/verdicts.py) and applies that:
it knows no status codes. Every item reaches one outcome, recorded once in the ledger:
delivered, or dead-lettered with its reason; on an abort (a fatal verdict, a second signal)
what is not delivered stays open and the rerun sends it.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import anyio.abc
import httpx
from moerules.engine.connector import (
    Delivered,
    Fatal,
    Item,
    Partial,
    Reject,
    Response,
    Retry,
    Sink,
    SinkEncoder,
    Split,
    Verdict,
    WireRequest,
)
from moerules.engine.runtime.deadletter import DEAD_LETTER_FORMAT, DeadLetterWriter, item_record
from moerules.engine.runtime.ratelimit import Limiter
from moerules.engine.runtime.report import RunReport
from moerules.engine.runtime.retry import RetryPolicy

__all__ = ["RunControl", "Sender"]


class RunControl:
    """Whether the run should stop reading (``stopping``) or stop sending too (``aborted``)."""

    def __init__(self) -> None:
        self.stopping = False
        self.aborted = False
        self.reason = ""
        self._aborted = anyio.Event()
        self._on_stop: list[Callable[[], object]] = []

    def on_stop(self, callback: Callable[[], object]) -> None:
        self._on_stop.append(callback)

    def stop(self, reason: str) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.reason = reason
        for callback in self._on_stop:
            callback()

    def abort(self, reason: str) -> None:
        self.stop(reason)
        self.aborted = True
        self._aborted.set()

    async def sleep(self, seconds: float) -> bool:
        """Sleep; False when the run was aborted meanwhile."""
        with anyio.move_on_after(seconds):
            await self._aborted.wait()
        return not self.aborted


# -- sending one request to its end ----------------------------------------------------------
class Sender:
    """Takes a request to a final outcome: delivered, dead-lettered, or left open on abort.

    Waits for the rate limiter, sends, and applies the sink's verdict on the answer: retries
    what is retryable (after the partner's Retry-After when it gives one, else backoff with
    jitter), resends in halves what is too large, dead-letters each item that cannot be
    delivered, stops the run on a fatal verdict. It knows no status codes. ``on_final(items,
    delivered)`` hears of every item that reached its outcome, after its dead letter is
    written.
    """

    def __init__(
        self,
        sink: Sink,
        client: httpx.AsyncClient,
        limiter: Limiter,
        policy: RetryPolicy,
        report: RunReport,
        dead: DeadLetterWriter,
        control: RunControl,
        *,
        on_final: Callable[[list[Item], int], None],
        request_timeout: float = 30.0,
    ) -> None:
        self.sink = sink
        self.client = client
        self.limiter = limiter
        self.policy = policy
        self.report = report
        self.ledger = report.ledger
        self.dead = dead
        self.control = control
        self.on_final = on_final
        self.request_timeout = request_timeout
        # the values of the sink's secret headers (an Authorization token...): a partner or a
        # proxy that echoes the request must not put them into dead letters or warnings
        self._header_secrets: set[str] = set()
        # where items held by an items-only verdict wait (``hold_in``); without one they
        # wait in the sending task
        self._holding: anyio.abc.TaskGroup | None = None

    def hold_in(self, tasks: anyio.abc.TaskGroup | None) -> None:
        """Run the waits of items-only holds as tasks of ``tasks`` (the run's send group)."""
        self._holding = tasks

    def _note_secrets(self, request: WireRequest) -> None:
        secret_headers = self.sink.secret_headers
        for name, value in request.headers.items():
            if name.lower() in secret_headers and value not in self._header_secrets:
                self._header_secrets.add(value)
                token = value.split()[-1] if value.split() else ""
                if len(token) >= 8:  # "Basic <token>": the token alone is as secret
                    self._header_secrets.add(token)

    def excerpt(self, answer: Response) -> str:
        """The start of an answer, as dead letters and warnings show it (secrets scrubbed
        before it is cut, so that no part of one is left at the cut)."""
        excerpt = answer.excerpt
        longest = max(map(len, self._header_secrets), default=0)
        wide = answer.body[: len(answer.body[:300]) + longest].decode("utf-8", "replace")
        shown = self.shown(wide)
        return excerpt if shown == wide else shown[: len(excerpt)]

    def shown(self, text: str) -> str:
        """``text`` (an answer's excerpt, a verdict's reason) as outputs may show it."""
        for secret in sorted(self._header_secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    async def send(self, request: WireRequest, attempt: int = 0) -> None:
        """Send ``request`` until its items reach an outcome; ``attempt`` tries were made
        for them already (a partial retry carries its count on)."""
        self._note_secrets(request)
        while True:
            attempt += 1
            await self.limiter.acquire(request)
            if self.control.aborted:
                return
            answer, verdict = await self._attempt(request)
            if self.control.aborted and not isinstance(verdict, Delivered):
                return  # after an abort only successes are recorded; the rerun sends the rest
            if isinstance(verdict, Delivered):
                self._delivered(request.items)
                return
            if isinstance(verdict, Split):
                await self._split(request, verdict, answer, attempt)
                return
            if isinstance(verdict, Fatal):
                self.control.abort(
                    self.shown(
                        verdict.reason
                        if answer is None
                        else f"the destination refused the request ({verdict.reason}): "
                        f"{self.excerpt(answer)[:200]}"
                    )
                )
                return
            if isinstance(verdict, Reject):
                self._dead(
                    request.items,
                    f"rejected by the destination: {verdict.reason}",
                    verdict.reason,
                    answer,
                    attempt,
                )
                return
            if isinstance(verdict, Partial):
                await self._partial(request, verdict, answer, attempt)
                return
            # Retry
            if verdict.holds == "items":  # only these items wait; the credential goes on
                await self._hold(request, None, verdict.reason, verdict.after, answer, attempt)
                return
            if verdict.throttled:
                self.limiter.widen(request.limit_key)
            if not await self._wait_to_retry(request, verdict.after, attempt):
                if not self.control.aborted:
                    self._dead(
                        request.items,
                        f"retries exhausted: {verdict.reason}",
                        verdict.reason,
                        answer,
                        attempt,
                    )
                return

    async def _hold(
        self,
        request: WireRequest,
        items: list[Item] | None,
        reason: str,
        after: float | None,
        answer: Response | None,
        attempt: int,
    ) -> None:
        """``items`` (the whole request when None) wait ``after`` seconds in a task of their
        own, then are sent again (re-encoded when a part); the limiter is neither paused nor
        slowed, so other requests go on (the partner throttled these users, not the key)."""
        held = request.items if items is None else items
        if not self.policy.can_retry(attempt):
            self._dead(held, f"retries exhausted: {reason}", reason, answer, attempt)
            return
        self.report.retries += 1
        delay = self.policy.delay(attempt, after)

        async def later() -> None:
            if not await self.control.sleep(delay):
                return  # aborted: left open for the rerun
            for part in [request] if items is None else self._encode(items):
                await self.send(part, attempt)

        if self._holding is None:
            await later()
        else:
            self._holding.start_soon(later)

    async def _wait_to_retry(self, request: WireRequest, after: float | None, attempt: int) -> bool:
        """Wait before another try; False when none may follow (retries out, or aborted)."""
        if not self.policy.can_retry(attempt):
            return False
        self.report.retries += 1
        delay = self.policy.delay(attempt, after)
        if after is not None:
            # holds="credential": the partner speaks for the whole key, not just this request
            self.limiter.pause(request.limit_key, delay)
        return await self.control.sleep(delay)

    async def _attempt(self, request: WireRequest) -> tuple[Response | None, Verdict]:
        """One try: the answer (None when there was none) and its verdict."""
        report = self.report
        report.requests += 1
        report.request_bytes += len(request.body)
        response: httpx.Response | None = None
        try:
            with anyio.move_on_after(self.request_timeout):
                # compressed here, at send time: the request keeps its readable body
                response = await self.client.request(
                    request.method,
                    request.url,
                    headers=request.wire_headers(),
                    content=request.wire_body(),
                )
        except httpx.TimeoutException:
            pass
        except httpx.UnsupportedProtocol as exc:
            return None, Fatal(f"cannot send to {request.url.split('?')[0]}: {exc}")
        except httpx.TransportError as exc:
            report.statuses["connection error"] += 1
            return None, Retry(f"connection failed ({type(exc).__name__}: {exc})")
        if response is None:
            report.statuses["timeout"] += 1
            return None, Retry(f"no answer within {self.request_timeout:g} s")
        report.statuses[str(response.status_code)] += 1
        # scrubbed as it arrives: a partner (or proxy) that echoes the request would put the
        # key into excerpts, cut short where no later scrubbing could recognise it
        answer = Response(
            response.status_code, response.headers, self.dead.scrub.bytes(response.content)
        )
        verdict = self.sink.classify(request, answer)
        if getattr(verdict, "throttled", False):
            report.throttled += 1
        return answer, verdict

    def _encode(self, items: list[Item]) -> list[WireRequest]:
        """``items`` as new requests of the sink (a part to send again); refused ones are
        dead-lettered (they were encodable once: only a changed sink refuses them)."""
        encoder: SinkEncoder = self.sink.encoder()
        requests, refused = encoder.add_all(items)
        for item, reason, error in refused:
            self._write_dead(item, reason, None, 0, error)
            self.ledger.settle([item], reason)
        if refused:
            self.on_final([r.item for r in refused], 0)
        return requests + encoder.flush()

    async def _split(
        self, request: WireRequest, verdict: Split, answer: Response | None, attempt: int
    ) -> None:
        """Too large for the partner: send each half again, re-encoded; alone, dead-letter."""
        items = request.items
        if len(items) <= 1:
            self._dead(
                items,
                f"too large for one request ({verdict.reason})",
                verdict.reason,
                answer,
                attempt,
            )
            return
        middle = len(items) // 2
        for half in (items[:middle], items[middle:]):
            for part in self._encode(half):
                await self.send(part)

    async def _partial(
        self, request: WireRequest, verdict: Partial, answer: Response | None, attempt: int
    ) -> None:
        """Rejected items dead-lettered, the ones to retry sent again, the rest delivered."""
        items = request.items
        rejected = {i: why for i, why in verdict.rejected.items() if 0 <= i < len(items)}
        again = sorted(i for i in verdict.retry if 0 <= i < len(items) and i not in rejected)
        reason = self.shown(f"rejected by the destination: {verdict.reason or 'item refused'}")
        for index, why in rejected.items():
            self._write_dead(items[index], reason, answer, attempt, why)
        self.ledger.settle([items[i] for i in rejected], reason)
        resend = [
            items[i]
            for i in sorted(verdict.resend)
            if 0 <= i < len(items) and i not in rejected and i not in verdict.retry
        ]
        arrived = [
            item
            for i, item in enumerate(items)
            if i not in verdict.retry and i not in rejected and i not in verdict.resend
        ]
        self.ledger.settle(arrived, None)
        self.on_final([items[i] for i in rejected] + arrived, len(arrived))
        retry = [items[i] for i in again]
        if verdict.holds == "items":
            if retry and self._holding is not None:  # their wait starts now, beside the rest
                await self._hold(request, retry, verdict.reason, verdict.after, answer, attempt)
            await self._resend(resend, verdict.reason, answer, attempt)
            if retry and self._holding is None:
                await self._hold(request, retry, verdict.reason, verdict.after, answer, attempt)
            return
        await self._resend(resend, verdict.reason, answer, attempt)
        if not again:
            return
        if verdict.throttled:
            self.limiter.widen(request.limit_key)
        if not await self._wait_to_retry(request, verdict.after, attempt):
            if not self.control.aborted:
                self._dead(
                    retry, f"retries exhausted: {verdict.reason}", verdict.reason, answer, attempt
                )
            return
        for part in self._encode(retry):
            await self.send(part, attempt)

    async def _resend(
        self, items: list[Item], reason: str, answer: Response | None, attempt: int
    ) -> None:
        """Items the answer did not ingest, though not refused: sent again at once."""
        if not items:
            return
        if not self.policy.can_retry(attempt):
            self._dead(items, f"retries exhausted: {reason}", reason, answer, attempt)
            return
        self.report.retries += 1
        for part in self._encode(items):
            await self.send(part, attempt)

    def _delivered(self, items: list[Item]) -> None:
        self.ledger.settle(items, None)
        self.on_final(items, len(items))

    def _dead(
        self, items: list[Item], reason: str, error: str, answer: Response | None, attempt: int
    ) -> None:
        reason = self.shown(reason)
        for item in items:
            self._write_dead(item, reason, answer, attempt, error)
        self.ledger.settle(items, reason)
        self.on_final(items, 0)

    def _write_dead(
        self, item: Item, reason: str, answer: Response | None, attempt: int, error: str
    ) -> None:
        """The dead letter of a taken item (its outcome goes to the ledger with it)."""
        line, index = item.ref
        error = self.shown(error)
        self.dead.write(
            reason,
            record=item_record(item),
            error=error,
            line=line,
            rule=item.rule,
            event_index=None if index < 0 else index,
            stage="delivery",
            format=DEAD_LETTER_FORMAT,
            status=None if answer is None else answer.status,
            response="" if answer is None else self.excerpt(answer),
            attempts=attempt,
        )
