#!/usr/bin/env node
'use strict';
// End-to-end check of the example against a running gateway:
//
//   npm test -- --addr HOST:PORT [--api-key KEY] [--timeout SECONDS]
//
// Plain node:assert, no test framework. Prints one line per case and
// `node client: ok` at the end; exits 1 on the first failure.

const assert = require('node:assert/strict');
const { parseArgs } = require('node:util');
const protoLoader = require('@grpc/proto-loader');
const vc = require('./vidcascade');

// 2^64 - 59: a valid uint64 far above 2^53, so a client that lets it pass
// through a JS number gets a different seed back.
const BIG_SEED = '18446744073709551557';
const PROMPT = 'a red circle moving left on a black background';
// Denoising steps of the first diffusion stage (the override under test) and
// of the others (kept low so the test runs in seconds).
const FIRST_STAGE_STEPS = 3;
const OTHER_STAGE_STEPS = 2;

function options() {
  const { values } = parseArgs({
    options: {
      addr: { type: 'string' },
      'api-key': { type: 'string' },
      timeout: { type: 'string', default: '120' },
    },
  });
  const addr = values.addr ?? process.env.VIDCASCADE_ADDR;
  if (!addr) {
    process.stderr.write('usage: npm test -- --addr HOST:PORT [--api-key KEY] [--timeout SECONDS]\n');
    process.exit(2);
  }
  return {
    addr,
    apiKey: values['api-key'] ?? process.env.VIDCASCADE_API_KEY,
    timeoutSeconds: Number(values.timeout),
  };
}

// (0) No server needed: what the loader's DEFAULT options would have done to
// the request of case 1, and to the seed the gateway reports. This is why
// vidcascade.js sets keepCase, longs, enums, defaults and oneofs.
function defaultOptionsPitfalls() {
  const naive = protoLoader.loadSync('vidcascade/v1/gateway.proto', {
    includeDirs: [vc.PROTO_DIR],
  });
  const naiveGenerate = naive['vidcascade.v1.Gateway'].Generate;
  const generate = protoLoader.loadSync('vidcascade/v1/gateway.proto', vc.LOADER_OPTIONS)[
    'vidcascade.v1.Gateway'
  ].Generate;

  // The request as every other language's docs spell it. With keepCase=false
  // the loader expects `stageOverrides` and drops `stage_overrides` silently.
  const request = { prompt: PROMPT, seed: BIG_SEED, stage_overrides: { base: { steps: 3 } } };
  const sentNaively = generate.requestDeserialize(naiveGenerate.requestSerialize(request));
  assert.deepEqual(sentNaively.stage_overrides, {}, 'default options were expected to drop stage_overrides');
  const sent = generate.requestDeserialize(generate.requestSerialize(request));
  assert.equal(sent.stage_overrides.base.steps, 3);

  // A seed as a JS number is rounded before it is sent (here to 2^64, which
  // protobufjs then clamps to 2^64 - 1).
  const asNumber = generate.requestDeserialize(
    generate.requestSerialize({ prompt: PROMPT, seed: Number(BIG_SEED) }),
  );
  assert.notEqual(asNumber.seed, BIG_SEED);

  // The seed coming back: a Long object under the default options, which is
  // not equal to the string, and which Number() rounds.
  const event = generate.responseSerialize({ accepted: { request_id: 'r', seed: BIG_SEED } });
  const naiveEvent = naiveGenerate.responseDeserialize(event);
  assert.equal(typeof naiveEvent.accepted.seed, 'object');
  assert.notEqual(naiveEvent.accepted.seed, BIG_SEED);
  assert.notEqual(String(Number(naiveEvent.accepted.seed)), BIG_SEED);
  assert.equal(naiveEvent.accepted.request_id, undefined); // it is `requestId` there
  assert.equal(naiveEvent.event, undefined); // no oneof name without oneofs: true
  const goodEvent = generate.responseDeserialize(event);
  assert.equal(goodEvent.accepted.seed, BIG_SEED);
  assert.equal(goodEvent.event, 'accepted');
}

// (1) A seed above 2^53 round-trips, a stage override takes effect, and the
// raw final video arrives whole.
async function seedOverridesAndRawVideo(client, opts, gatewayInfo) {
  const stages = vc.diffusionStages(gatewayInfo);
  assert.ok(stages.length > 0, 'Info lists no diffusion stage');
  const first = stages[0];
  assert.notEqual(
    first.defaults?.steps,
    FIRST_STAGE_STEPS,
    `stage ${first.name} already defaults to ${FIRST_STAGE_STEPS} steps; the override would prove nothing`,
  );
  const steps = Object.fromEntries(
    stages.map((s, i) => [s.name, i === 0 ? FIRST_STAGE_STEPS : OTHER_STAGE_STEPS]),
  );
  const stage_overrides = Object.fromEntries(
    Object.entries(steps).map(([name, n]) => [name, { steps: n }]),
  );

  const events = [];
  const result = await vc.generate(
    client,
    { prompt: PROMPT, seed: BIG_SEED, stage_overrides },
    { ...opts, onEvent: (e) => events.push(e) },
  );

  assert.equal(events[0].event, 'accepted', 'the first event is not `accepted`');
  assert.equal(typeof result.accepted.seed, 'string');
  assert.equal(result.accepted.seed, BIG_SEED, 'the seed came back different');

  for (const [name, n] of Object.entries(steps)) {
    const started = result.started.filter((s) => s.stage === name);
    assert.ok(started.length > 0, `no stage_started for ${name}`);
    for (const s of started) {
      assert.equal(s.total_steps, n, `stage ${name} runs ${s.total_steps} steps, override was ${n}`);
    }
    const progress = events.filter((e) => e.event === 'progress' && e.progress.stage === name);
    assert.deepEqual(
      progress.map((e) => e.progress.step),
      Array.from({ length: n }, (_, i) => i + 1),
      `progress steps of ${name}`,
    );
    const timing = result.timings.find((t) => t.stage === name);
    assert.ok(timing, `no timing for ${name}`);
    assert.equal(timing.steps_run, n, `timing of ${name}`);
  }

  const video = result.video;
  assert.ok(video, 'no raw video (the request asked for the default, raw RGB8)');
  assert.equal(result.encoded, null);
  assert.equal(video.frames.length, video.total_frames);
  for (const frame of video.frames) assert.equal(frame.length, video.width * video.height * 3);
  const shape = result.accepted.output_shape;
  assert.deepEqual(
    [video.total_frames, video.height, video.width],
    [shape.frames, shape.height, shape.width],
    'the video is not the shape `accepted` announced',
  );
  return `seed ${result.accepted.seed} round-tripped; ${Object.entries(steps)
    .map(([name, n]) => `${name} ${n} steps`)
    .join(', ')}; ${video.total_frames} frames ${video.width}x${video.height} @ ${video.fps} fps`;
}

// (2) An empty prompt is INVALID_ARGUMENT, and the message names `prompt`.
async function emptyPrompt(client, opts) {
  await assert.rejects(vc.generate(client, { prompt: '' }, opts), (err) => {
    assert.equal(err.code, vc.grpc.status.INVALID_ARGUMENT, `got ${vc.describeError(err)}`);
    assert.match(err.details, /\bprompt\b/);
    return true;
  });
  return 'INVALID_ARGUMENT naming prompt';
}

// (3) output.format = GIF: the `completed.encoded` pieces assemble to a GIF.
async function gifOutput(client, opts, gatewayInfo) {
  const stage_overrides = Object.fromEntries(
    vc.diffusionStages(gatewayInfo).map((s) => [s.name, { steps: 1 }]),
  );
  const result = await vc.generate(
    client,
    { prompt: PROMPT, seed: '7', stage_overrides, output: { format: 'VIDEO_FORMAT_GIF' } },
    opts,
  );

  const encoded = result.encoded;
  assert.equal(result.video, null);
  assert.equal(encoded.format, 'VIDEO_FORMAT_GIF');
  assert.equal(encoded.media_type, 'image/gif');
  assert.equal(encoded.file_count, 1);
  const gif = encoded.files[0];
  assert.equal(gif.subarray(0, 6).toString('latin1'), 'GIF89a');
  const shape = gatewayInfo.clip_shape;
  assert.deepEqual(
    [encoded.shape.frames, encoded.shape.height, encoded.shape.width],
    [shape.frames, shape.height, shape.width],
  );
  // GIF logical screen size: little-endian uint16 width, height at byte 6.
  assert.deepEqual([gif.readUInt16LE(6), gif.readUInt16LE(8)], [shape.width, shape.height]);
  assert.ok(result.timings.length > 0, 'no timings with the last piece');
  return `GIF89a, ${gif.length} bytes`;
}

async function main() {
  const { addr, ...opts } = options();
  const client = vc.connect(addr);
  let current = '';
  const check = async (name, run) => {
    current = name;
    console.log(`ok - ${name}: ${await run()}`);
  };
  try {
    await check('default loader options', async () => {
      defaultOptionsPitfalls();
      return 'would drop stage_overrides and return the seed as a Long (offline)';
    });
    let gatewayInfo;
    await check('info', async () => {
      gatewayInfo = await vc.info(client, opts);
      const { model, build, stages } = gatewayInfo;
      return `${model.name} (build ${build.version}), stages ${stages.map((s) => s.name).join(', ')}`;
    });
    await check('seed, stage override, raw video', () =>
      seedOverridesAndRawVideo(client, opts, gatewayInfo),
    );
    await check('empty prompt', () => emptyPrompt(client, opts));
    await check('gif output', () => {
      assert.ok(
        gatewayInfo.output_formats.includes('VIDEO_FORMAT_GIF'),
        `Info lists no GIF output: ${gatewayInfo.output_formats}`,
      );
      return gifOutput(client, opts, gatewayInfo);
    });
    console.log('node client: ok');
  } catch (err) {
    console.log(`not ok - ${current}`);
    process.stderr.write(
      err instanceof assert.AssertionError ? `${err.stack}\n` : `error: ${vc.describeError(err)}\n`,
    );
    process.exitCode = 1;
  } finally {
    client.close();
  }
}

main();
