"""A reward a 0.3.0 runner reports through the store API is read back by agentlightning as
it was sent, also one JSON cannot carry: the runner writes a NaN as `NaN`. 0.3.0's own
server keeps such a span but answers with the NaN as null, which its client cannot read:
the call fails, and so does every later read of the rollout's spans."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from agentlightning.emitter import emit_reward, find_final_reward
from agentlightning.store.client_server import LightningStoreClient
from agentlightning.types import Span
from store_pair import start_agl

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("reward", [0.5, math.nan, math.inf])
async def test_a_reward_span_reads_back_as_the_reward_sent(tmp_path: Path, reward: float) -> None:
    for daemon in start_agl(tmp_path / "state"):
        client = LightningStoreClient(daemon.url, retry_delays=(), health_retry_delays=())
        try:
            rollout = await client.start_rollout(input="x")
            ids = {"rollout_id": rollout.rollout_id, "attempt_id": rollout.attempt.attempt_id}
            sequence_id = await client.get_next_span_sequence_id(**ids)
            # as the runner reports a float its agent returned
            await client.add_span(
                Span.from_core_fields(emit_reward(reward, propagate=False), **ids, sequence_id=sequence_id)
            )
            read = find_final_reward((await client.query_spans(rollout.rollout_id)).items)
        finally:
            await client.close()
        assert read == reward or (math.isnan(reward) and read is not None and math.isnan(read))
