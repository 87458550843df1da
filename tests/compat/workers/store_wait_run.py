"""Wait for one rollout, with no time limit, through agentlightning 0.3.0's own
`LightningStoreClient`, across whatever the test does to the daemon meanwhile.

    python store_wait_run.py URL ROLLOUT_ID

The last stdout line is one JSON object: `{"finished": [{"rollout_id", "status"}, ...]}`,
what the wait returned.
"""

from __future__ import annotations

import asyncio
import json
import sys

from agentlightning.store.client_server import LightningStoreClient


async def wait(url: str, rollout_id: str) -> None:
    # patient enough for a restart, as docs/store-api.md advises
    store = LightningStoreClient(url, health_retry_delays=(0.1, 0.2, 0.5, 1, 2, 4))
    try:
        finished = await store.wait_for_rollouts(rollout_ids=[rollout_id], timeout=None)
    finally:
        await store.close()
    print(json.dumps({"finished": [{"rollout_id": r.rollout_id, "status": r.status} for r in finished]}))


if __name__ == "__main__":
    asyncio.run(wait(sys.argv[1], sys.argv[2]))
