"""A small program instrumented with the real SkyWalking Python agent (apache-skywalking).

It reports through whatever SW_AGENT_COLLECTOR_BACKEND_SERVICES names (skylift-proxy in the
tests and the demo): one trace segment and one warning log per order, and the agent's own
process (PVM) meters every SW_AGENT_METER_REPORTER_PERIOD seconds.

Usage: instrumented_app.py ORDERS [PAUSE [LINGER]]
  ORDERS  orders to place, then stop; 0 places orders until SIGTERM or SIGINT
  PAUSE   seconds between orders (default 0)
  LINGER  seconds to keep running after the last order, so the meter and heartbeat
          reporters run a few periods (default 3)
"""

import logging
import signal
import sys
import time

from skywalking.agent import agent
from skywalking.trace.context import get_context

stopping = False


def stop(_signum, _frame) -> None:
    global stopping
    stopping = True


def main() -> None:
    orders = int(sys.argv[1])
    pause = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    linger = float(sys.argv[3]) if len(sys.argv) > 3 else 3.0
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    agent.start()
    log = logging.getLogger("checkout")
    order = 0
    while not stopping and (orders == 0 or order < orders):
        context = get_context()
        with context.new_entry_span(op=f"/checkout/{order}"):
            with context.new_local_span(op="price"):
                pass
            log.warning("order %d placed", order)
        order += 1
        if pause:
            time.sleep(pause)
    if orders:
        # Let the meter and heartbeat reporters run a few periods before shutting down.
        time.sleep(linger)
    agent.stop()


if __name__ == "__main__":
    main()
