"""A small program instrumented with the real SkyWalking Python agent (apache-skywalking).

It reports through whatever SW_AGENT_COLLECTOR_BACKEND_SERVICES names (skylift-proxy in the
tests): one trace segment and one warning log per order, and the agent's own process (PVM)
meters every SW_AGENT_METER_REPORTER_PERIOD seconds. Usage: instrumented_app.py ORDERS
"""

import logging
import sys
import time

from skywalking.agent import agent
from skywalking.trace.context import get_context


def main() -> None:
    orders = int(sys.argv[1])
    agent.start()
    log = logging.getLogger("checkout")
    for order in range(orders):
        context = get_context()
        with context.new_entry_span(op=f"/checkout/{order}"):
            with context.new_local_span(op="price"):
                pass
            log.warning("order %d placed", order)
    # Let the meter reporter run a few periods before shutting down.
    time.sleep(3)
    agent.stop()


if __name__ == "__main__":
    main()
