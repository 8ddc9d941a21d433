'use strict';
// The Node.js peer of bench/fanout.py, written the way a classic Node book
// writes a real-time server: `cluster` with WORKERS workers (2), each worker
// with ONE Redis subscriber connection, plain `http` for SSE and long-poll,
// the `ws` package for WebSocket. Every message is written to every open
// response of the channel; there is no history.
//
//   GET /sub/<channel>  Accept: text/event-stream -> SSE: "retry: 2000", then
//                       "id: <id>\ndata: <data>" per message
//   GET /sub/<channel>?cursor=...                 -> long-poll: held until the
//                       next message, {"events":[{"id","data"}],"cursor":id};
//                       cursor=0 is answered at once: {"events":[],"cursor":""}
//   WS  /sub/<channel>/ws -> {"subscribed":channel}, then {"id","data"} frames
//   PUBLISH peer:<channel> '{"id":..,"data":..}'  (on Redis) publishes
//
// Environment: HOST (127.0.0.1), PORT (8001), WORKERS (2),
// REDIS_URL (redis://127.0.0.1:6379),
// BACKLOG (4096, as our gunicorn.conf.py), LONGPOLL_TIMEOUT_SECONDS (25).

const cluster = require('node:cluster');
const http = require('node:http');
const Redis = require('ioredis');
const { WebSocketServer } = require('ws');

const HOST = process.env.HOST || '127.0.0.1';
const PORT = Number(process.env.PORT || 8001);
const WORKERS = Number(process.env.WORKERS || 2);
const REDIS_URL = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
const BACKLOG = Number(process.env.BACKLOG || 4096);
const LONGPOLL_TIMEOUT_MS = 1000 * Number(process.env.LONGPOLL_TIMEOUT_SECONDS || 25);
const PREFIX = 'peer:';
const CHANNEL = /^\/sub\/([A-Za-z0-9_.:-]{1,100})(\/ws)?$/;

if (cluster.isPrimary) {
  primary();
} else {
  worker();
}

function primary() {
  let ready = 0;
  let stopping = false;
  for (let i = 0; i < WORKERS; i++) cluster.fork();
  cluster.on('message', (_worker, message) => {
    if (message === 'ready' && ++ready === WORKERS) {
      console.log(`listening on ${PORT} with ${WORKERS} workers`);
    }
  });
  cluster.on('exit', (w, code, signal) => {
    if (stopping) return;
    console.error(`worker ${w.process.pid} died (${signal || code}); starting another`);
    cluster.fork();
  });
  const stop = () => {
    stopping = true;
    for (const w of Object.values(cluster.workers)) w.process.kill('SIGTERM');
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

function worker() {
  // channel name -> the subscribers of this worker
  const channels = new Map();
  const room = (name) => {
    let r = channels.get(name);
    if (!r) {
      r = { sse: new Set(), polls: new Set(), ws: new Set() };
      channels.set(name, r);
    }
    return r;
  };

  const subscriber = new Redis(REDIS_URL);
  subscriber.on('error', (err) => console.error('redis:', err.message));
  subscriber.on('pmessage', (_pattern, key, payload) => {
    const r = channels.get(key.slice(PREFIX.length));
    if (!r) return;
    const msg = JSON.parse(payload);
    const id = String(msg.id);
    const data = typeof msg.data === 'string' ? msg.data : JSON.stringify(msg.data);
    const event = JSON.stringify({ id, data: msg.data });

    const chunk = `id: ${id}\n${data.split('\n').map((line) => `data: ${line}\n`).join('')}\n`;
    for (const res of r.sse) res.write(chunk);

    for (const ws of r.ws) ws.send(event);

    if (r.polls.size) {
      const body = `{"events":[${event}],"cursor":${JSON.stringify(id)}}`;
      const polls = r.polls;
      r.polls = new Set();
      for (const res of polls) answer(res, body);
    }
  });

  function answer(res, body) {
    clearTimeout(res.pollTimer);
    res.writeHead(200, {
      'Content-Type': 'application/json',
      'Content-Length': Buffer.byteLength(body),
      'Cache-Control': 'no-store',
    });
    res.end(body);
  }

  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://localhost');
    if (url.pathname === '/healthz') {
      res.end('ok');
      return;
    }
    const match = CHANNEL.exec(url.pathname);
    if (req.method !== 'GET' || !match || match[2]) {
      res.writeHead(404, { 'Content-Type': 'text/plain' });
      res.end('not found');
      return;
    }
    const r = room(match[1]);

    if ((req.headers.accept || '').includes('text/event-stream')) {
      res.writeHead(200, {
        'Content-Type': 'text/event-stream',
        'Cache-Control': 'no-cache',
        Connection: 'keep-alive',
      });
      res.write('retry: 2000\n\n');
      r.sse.add(res);
      res.on('close', () => r.sse.delete(res));
      return;
    }

    // long-poll. No history: cursor=0 ("everything from the start") is
    // answered at once with no events and an empty cursor, so that the next
    // poll is held: any cursor but "0", or none, waits for the next message.
    const cursor = url.searchParams.get('cursor') || '';
    if (cursor === '0') {
      answer(res, '{"events":[],"cursor":""}');
      return;
    }
    r.polls.add(res);
    res.pollTimer = setTimeout(() => {
      r.polls.delete(res);
      answer(res, `{"events":[],"cursor":${JSON.stringify(cursor)}}`);
    }, LONGPOLL_TIMEOUT_MS);
    res.on('close', () => {
      clearTimeout(res.pollTimer);
      r.polls.delete(res);
    });
  });

  const wss = new WebSocketServer({ noServer: true, clientTracking: false });
  server.on('upgrade', (req, socket, head) => {
    const match = CHANNEL.exec(new URL(req.url, 'http://localhost').pathname);
    if (!match || !match[2]) {
      socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\n');
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      const r = room(match[1]);
      ws.send(JSON.stringify({ subscribed: match[1] }));
      r.ws.add(ws);
      ws.on('close', () => r.ws.delete(ws));
      ws.on('error', () => r.ws.delete(ws));
    });
  });

  // Long-lived responses: no timeouts on them (Node's defaults are for requests).
  server.requestTimeout = 0;
  server.keepAliveTimeout = 15000; // as our gunicorn.conf.py
  // Subscribe once the connection is ready: ioredis sends a PSUBSCRIBE issued
  // earlier ahead of its ready check (INFO), which then fails in subscriber
  // mode and makes it reconnect.
  const subscribed = new Promise((resolve) => subscriber.once('ready', resolve))
    .then(() => subscriber.psubscribe(PREFIX + '*'));
  server.listen({ host: HOST, port: PORT, backlog: BACKLOG }, () => {
    subscribed.then(() => process.send('ready'));
  });
  process.on('disconnect', () => process.exit(0));
}
