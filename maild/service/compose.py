"""Build the bytes of each message ahead of time: notices encrypted to one
pinned key, public mail signed. Runs in worker threads (gpg is slow); reads
nothing from the store and never logs content."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime

from maild.adapters import mime
from maild.adapters.gpg import GpgError, Keyring
from maild.domain import mailtext
from maild.domain.advisory import split_front_matter
from maild.domain.businessdays import BusinessCalendar
from maild.domain.mimeparse import MimeError
from maild.domain.models import AdvisoryRecord, MessageRecord
from maild.service import membermail
from maild.service.embargo import Patch, unbundle

Headers = list[tuple[str, str]]


@dataclass(frozen=True)
class Draft:
    """The advisory's Markdown text and patches, in memory only."""

    text: str
    patches: tuple[Patch, ...]


@dataclass(frozen=True)
class Composer:
    keyring: Keyring
    identity_address: str
    signing_key: str
    calendar: BusinessCalendar
    ack_address: str | None = None  # where acknowledgements go (the intake); default: From

    def open(self, record: AdvisoryRecord) -> Draft:
        """Unseal an advisory (decrypting with the identity key): the same text
        and patches whichever form it was sealed in."""
        mail = _sealed_mail(record)
        if mail is None:
            # A bundle maild sealed from files on this host (`maild submit`
            # takes any size): read whole, as it always was.
            source, patches = unbundle(self.keyring.decrypt(record.sealed, max_output=None))
        else:
            # A member's mail, kept as it came: read as the intake read it.
            form, packets = mail
            plaintext = self.keyring.decrypt(packets)
            try:
                read = membermail.sealed_content(plaintext, form)
            except MimeError as exc:
                raise GpgError(f"sealed advisory {record.id} is unreadable: {exc}") from None
            source, patches = read.body, list(read.patches)
        _, body, _ = split_front_matter(source, record.id)
        return Draft(body, tuple(patches))

    def notice(
        self,
        record: AdvisoryRecord,
        message: MessageRecord,
        draft: Draft,
        org_name: str,
        now: datetime,
    ) -> bytes:
        """The notice for one address: signed, and encrypted to its pinned key alone."""
        assert message.fingerprint is not None and message.ack_token is not None
        text = mailtext.notice(
            record.meta,
            record.plan,
            self.calendar,
            org_name=org_name,
            draft=draft.text,
            patch_names=[p.name for p in draft.patches],
            ack_token=message.ack_token,
            reply_to=self.ack_address or self.identity_address,
        )
        sent = record.plan.notify_at or now
        attachments = [mime.Attachment(p.name, p.data) for p in draft.patches]
        return self.encrypted(message, text, attachments, sent, now)

    def reply(self, message: MessageRecord, now: datetime) -> bytes:
        """A reply to a member: its stored text, encrypted to the member's key."""
        assert message.text is not None
        subject, _, body = message.text.partition("\n\n")
        return self.encrypted(message, mailtext.Text(subject, body), [], now, now)

    def encrypted(
        self,
        message: MessageRecord,
        text: mailtext.Text,
        attachments: Sequence[mime.Attachment],
        dated: datetime,
        now: datetime,
    ) -> bytes:
        """Real headers and body inside the encryption; generic ones outside."""
        assert message.fingerprint is not None
        outer = self._headers(message, mailtext.GENERIC_SUBJECT, dated)
        inner = mime.protected_part(
            self._headers(message, text.subject, dated),
            text.body,
            attachments,
            outer_headers=outer,
        )
        armored = self.keyring.sign_encrypt(inner, message.fingerprint, self.signing_key, now)
        return mime.encrypted_message(outer, armored)

    def public(self, message: MessageRecord, text: mailtext.Text, dated: datetime) -> bytes:
        """Signed, not encrypted: the pre-announcement and the disclosure."""
        part = mime.signed_part(text.body)
        signature = self.keyring.detach_sign(part, self.signing_key)
        return mime.signed_message(self._headers(message, text.subject, dated), part, signature)

    def _headers(self, message: MessageRecord, subject: str, dated: datetime) -> Headers:
        return [
            ("From", self.identity_address),
            ("To", message.address),
            ("Date", format_datetime(dated.astimezone(self.calendar.zone))),
            ("Message-ID", message.message_id),
            ("Subject", subject),
        ]


def _sealed_mail(record: AdvisoryRecord) -> tuple[membermail.Form, bytes] | None:
    try:
        return membermail.sealed_mail(record.sealed)
    except ValueError as exc:
        raise GpgError(f"sealed advisory {record.id} is unreadable: {exc}") from None
