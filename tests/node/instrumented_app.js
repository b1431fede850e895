// A small HTTP service instrumented with the real SkyWalking Node.js agent
// (skywalking-backend-js). It reports through whatever SW_AGENT_COLLECTOR_BACKEND_SERVICES
// names (skylift-proxy in the tests): one trace per order (the client's exit span and the
// server's entry span on /checkout/<n>), and the agent's heartbeats (instance properties and
// keepAlive, every 20 s: the agent's fixed period).
//
// Usage: node instrumented_app.js ORDERS LINGER
//   ORDERS  orders to place
//   LINGER  seconds to keep running after the last order, for the heartbeat to go out
'use strict';

const agent = require('skywalking-backend-js').default;

agent.start({
  serviceName: process.env.SW_AGENT_NAME,
  serviceInstance: process.env.SW_AGENT_INSTANCE,
  collectorAddress: process.env.SW_AGENT_COLLECTOR_BACKEND_SERVICES,
});

// Required after the agent started, so its http plugin is in place.
const http = require('http');

const orders = Number.parseInt(process.argv[2], 10);
const linger = Number.parseFloat(process.argv[3]);

const server = http.createServer((request, response) => {
  response.end(`placed ${request.url}`);
});

function order(port, n) {
  return new Promise((resolve, reject) => {
    http
      .get(`http://127.0.0.1:${port}/checkout/${n}`, (response) => {
        response.resume();
        response.on('end', resolve);
      })
      .on('error', reject);
  });
}

server.listen(0, '127.0.0.1', async () => {
  const { port } = server.address();
  for (let n = 0; n < orders; n += 1) {
    await order(port, n);
  }
  await new Promise((resolve) => setTimeout(resolve, linger * 1000));
  await agent.flush();
  server.close();
  process.exit(0);
});
