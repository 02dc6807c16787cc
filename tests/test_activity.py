"""`maild orgs activity`: who received notices, who acknowledged them, and
who acknowledged none of their last N (the policy's removal rule)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from maild.adapters.store import SqliteStore
from maild.domain.activity import activity
from maild.domain.models import MessageKind, MessagePurpose, MessageRecord, MessageState
from maild.domain.orgs import Org, parse_orgs
from tests.conftest import CLI
from tests.test_store import advisory, event
from tests.world import World

T0 = datetime(2026, 3, 2, 9, tzinfo=UTC)


def notice(adv: str, org: str, n: int, *, acked: bool, address: str | None = None) -> MessageRecord:
    sent = T0 + timedelta(days=n)
    return MessageRecord(
        adv,
        MessageKind.NOTICE,
        address or f"sec@{org}.example",
        f"<{adv}-{org}-{address}@m>",
        f"{adv}-{org}-{address}",
        state=MessageState.ACCEPTED,
        org=org,
        sent_at=sent,
        acked_at=sent + timedelta(hours=2) if acked else None,
    )


def orgs(world: World) -> list[Org]:
    return parse_orgs(world.orgs_text, "orgs.toml").public()


def test_counts_are_per_advisory_and_the_silent_are_flagged(world: World) -> None:
    """An org that acknowledged none of its last three notices is flagged;
    one that acknowledged from any of its addresses is not; the counts are
    per advisory, and the last acknowledgement is the newest."""
    rows = [
        notice("A1", "good", 1, acked=True),
        notice("A2", "good", 2, acked=False),
        notice("A3", "good", 3, acked=False),
        notice("A4", "good", 4, acked=False),
        notice("A1", "good2", 1, acked=False),
        notice("A2", "good2", 2, acked=False),
        notice("A3", "good2", 3, acked=False),
        notice("A3", "good2", 3, acked=True, address="other@good2.example"),
    ]
    good, good2 = activity(orgs(world), rows, 3)
    assert (good.received, good.acknowledged, good.flagged) == (4, 1, True)
    assert good.last_ack == T0 + timedelta(days=1, hours=2)
    assert [n.advisory_id for n in good.recent] == ["A4", "A3", "A2"]
    assert (good2.received, good2.acknowledged, good2.flagged) == (3, 1, False)


def test_too_few_notices_are_not_flagged_and_unsent_do_not_count(world: World) -> None:
    """Two unanswered notices are not yet "the last three"; blocked,
    cancelled, update and withdrawal messages are not notices received."""
    rows = [
        notice("A1", "good", 1, acked=False),
        notice("A2", "good", 2, acked=False),
        replace(notice("A3", "good", 3, acked=False), state=MessageState.BLOCKED),
        replace(notice("A4", "good", 4, acked=False), purpose=MessagePurpose.UPDATE),
    ]
    good, good2 = activity(orgs(world), rows, 3)
    assert (good.received, good.flagged) == (2, False)
    assert (good2.received, good2.flagged) == (0, False)
    assert activity(orgs(world), rows, 2)[0].flagged


def test_cli_lists_active_orgs_with_json(cli: CLI, world: World) -> None:
    """`orgs activity --json` gives one object per active org (never ad hoc
    ones), with the counts, the last acknowledgement and the flag."""
    store = SqliteStore.open(world.database)
    for n, adv in enumerate(("A1", "A2"), start=1):
        store.add_advisory(
            advisory(adv), [notice(adv, "good", n, acked=n == 1)], replace(event(), advisory_id=adv)
        )
    store.close()
    result = cli("--config", str(world.config), "orgs", "activity", "--json", "--last", "1")
    assert result.code == 0, result.err
    doc = result.json()
    assert doc["last"] == 1
    by_org = {o["org"]: o for o in doc["orgs"]}
    assert set(by_org) == {"good", "good2"}
    assert (by_org["good"]["received"], by_org["good"]["acknowledged"]) == (2, 1)
    assert by_org["good"]["flagged"] is True
    assert by_org["good"]["last_ack"].startswith("2026-03-03T11:00")
    text = cli("--config", str(world.config), "orgs", "activity", "--last", "1")
    assert "FLAG: none of the last 1 acknowledged" in text.out


@pytest.mark.parametrize("bad", ["0", "-2", "three"])
def test_last_must_be_positive(cli: CLI, world: World, bad: str) -> None:
    """--last N takes a whole number of 1 or more; anything else exits 2."""
    result = cli("--config", str(world.config), "orgs", "activity", "--last", bad)
    assert result.code == 2 and "1 or more" in result.err
