"""What maild answers a WG member's mail (no I/O here). Every reply is
signed by the identity key and encrypted to the member's own key by the
dispatcher; these functions only say what it reads."""

from __future__ import annotations

from collections.abc import Sequence

from maild.domain.audit import ChainCheck
from maild.domain.mailtext import Text
from maild.domain.models import AdvisoryRecord, AdvisoryState, Event, MessageKind, MessageRecord
from maild.service.views import Clock, Queue, plan_text, queue_text, show_text

HELP = """\
Send maild a PGP/MIME message signed with your own key and encrypted to
maild's identity key. The signature must cover the whole message; the
Subject counts only when your client protects it inside the encryption
(otherwise put the command on the first line of the body).

An advisory: the body is an advisory file (TOML front matter between +++
lines, then the Markdown draft); patches travel as attachments.

Commands, one per message:
  status [ID]                  the queue, or one advisory with its recipients
  list                         the queue
  cancel ID                    end an embargo without disclosure
  reschedule ID DISCLOSURE     move the disclosure (ISO 8601 with UTC offset)
  disclose-now ID REASON       publish now; unsent notices are cancelled
  approve ID                   the second member's approval (two-person rule)
  help                         this text

Every reply comes from maild signed and encrypted to your key."""


def submitted(record: AdvisoryRecord, messages: Sequence[MessageRecord], clock: Clock) -> Text:
    """The plan of an accepted advisory, who will be notified and who not."""
    if record.state is AdvisoryState.AWAITING_APPROVAL:
        head = (
            f"{record.id} is stored and awaits a second member's approval: it goes live "
            f"when another member sends 'approve {record.id}'. The plan below is made "
            "again at approval time."
        )
    else:
        head = f"{record.id} is accepted and scheduled."
    who = (
        "Recipients: chosen from the orgs list at approval."
        if record.state is AdvisoryState.AWAITING_APPROVAL
        else recipients(messages)
    )
    parts = [head, plan_text(record.plan, clock), who]
    return Text(f"Accepted: {record.id}", "\n\n".join(parts) + "\n")


def changed(
    verb: str, record: AdvisoryRecord, messages: Sequence[MessageRecord], clock: Clock
) -> Text:
    """After cancel, reschedule, disclose-now or approve."""
    parts = [
        f"{record.id}: {verb} done; it is now {record.state.value}.",
        plan_text(record.plan, clock),
        recipients(messages),
    ]
    return Text(f"Done: {verb} {record.id}", "\n\n".join(parts) + "\n")


def status(
    record: AdvisoryRecord,
    messages: Sequence[MessageRecord],
    events: Sequence[Event],
    check: ChainCheck,
    clock: Clock,
) -> Text:
    return Text(f"Status: {record.id}", show_text(record, messages, events, check, clock) + "\n")


def listing(queue: Queue, clock: Clock) -> Text:
    return Text("Queue", queue_text(queue, clock) + "\n")


def failed(what: str, error: str) -> Text:
    """The exact error, as `maild` would print it, and nothing of the mail."""
    body = f"maild could not do this: {what}\n\n{error}\n\nNothing was changed.\n"
    return Text(f"Refused: {what}", body)


def helping() -> Text:
    return Text("maild help", HELP + "\n")


def recipients(messages: Sequence[MessageRecord]) -> str:
    """The notice recipients: who will get one and who is blocked, and why."""
    notices = [m for m in messages if m.kind is MessageKind.NOTICE]
    if not notices:
        return "Recipients: no advance notices for this plan."
    lines = ["Recipients:"]
    for m in notices:
        why = f": {m.detail}" if m.detail else ""
        lines.append(f"  {m.org or '-'} <{m.address}> {m.state.value}{why}")
    return "\n".join(lines)
