"""Start-up failures are clear: a bad config stops the picker with the key's path."""

from __future__ import annotations

from pathlib import Path

import pytest

from pointsman_picker.__main__ import main
from pointsman_picker.core.framework import Assigned, PrefixStored, SessionBound
from pointsman_picker.redis_state import _DEC, _ENC, SyncBatch


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("picker: {stale_after_ms: -1}", "picker.stale_after_ms"),
        ("picker: {profiles: {p: [queue_scorer]}}", "did you mean 'queue-scorer'?"),
        ("picker: {unknown_key: 1}", "picker.unknown_key"),
    ],
)
def test_bad_config_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], section: str, message: str
) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(section + "\n")
    assert main(["--config", str(cfg)]) == 2
    assert message in capsys.readouterr().err


def test_sync_batch_round_trip() -> None:
    batch = SyncBatch(
        "r1",
        [
            Assigned("req", "pool", "a:1", 1.5),
            PrefixStored("pool", "a:1", (1, 2**63 + 5), 100),
            SessionBound("pool", "s", "a:1", 2.0, 60.0),
        ],
    )
    assert _DEC.decode(_ENC.encode(batch)) == batch
