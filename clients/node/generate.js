#!/usr/bin/env node
'use strict';
// Generates one video through a running vidcascade gateway and writes it out.
//
//   node generate.js --addr 127.0.0.1:50051 [--api-key KEY] [--seed N]
//       [--steps base=12 ...] [--format gif|mp4|png|raw] [--out PATH]
//       [--timeout SECONDS] "a red circle moving left on a black background"
//
// Progress goes to stderr, one line per stage start plus its percentage; the
// video goes to --out: a file for gif and mp4, a directory of frame-0000.png
// ... for png, a directory of binary PPMs (frame-0000.ppm ...) for raw.

const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');
const vc = require('./vidcascade');

const USAGE = `usage: node generate.js --addr HOST:PORT [--api-key KEY] [--seed N]
       [--steps STAGE=N ...] [--format gif|mp4|png|raw] [--out PATH]
       [--timeout SECONDS] PROMPT

  --addr      gateway address: host:port, http://host:port or https://host:port
              (default $VIDCASCADE_ADDR or 127.0.0.1:50051)
  --api-key   sent as "authorization: Bearer KEY" (default $VIDCASCADE_API_KEY)
  --seed      uint64 seed of all sampling noise (default: the gateway picks one)
  --steps     denoising steps of one stage, e.g. --steps base=12 (repeatable,
              or comma-separated: base=12,tsr=4); stage names as Info lists them
  --format    gif (default), mp4, png (a directory of PNG frames) or raw (a
              directory of binary PPM frames, from the raw RGB8 video)
  --out       output file (gif, mp4) or directory (png, raw); default
              out.gif, out.mp4, out-png/ or out-ppm/
  --timeout   deadline of the whole call in seconds (default 120)`;

// --format -> OutputOptions.format (an enum *name*: the loader runs with
// `enums: String`). raw sends no format: the gateway's default is raw RGB8.
const FORMATS = {
  gif: { format: 'VIDEO_FORMAT_GIF', out: 'out.gif' },
  mp4: { format: 'VIDEO_FORMAT_MP4', out: 'out.mp4' },
  png: { format: 'VIDEO_FORMAT_PNG', out: 'out-png' },
  raw: { format: null, out: 'out-ppm' },
};

const UINT64_MAX = (1n << 64n) - 1n;

class UsageError extends Error {}

function parseCommandLine(argv) {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        addr: { type: 'string' },
        'api-key': { type: 'string' },
        seed: { type: 'string' },
        steps: { type: 'string', multiple: true },
        format: { type: 'string', default: 'gif' },
        out: { type: 'string' },
        timeout: { type: 'string', default: '120' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (err) {
    throw new UsageError(err.message);
  }
  const { values, positionals } = parsed;
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  if (positionals.length !== 1) {
    throw new UsageError('give exactly one PROMPT (quote it)');
  }
  const format = FORMATS[values.format];
  if (!format) throw new UsageError(`--format must be gif, mp4, png or raw, not ${values.format}`);
  const timeout = Number(values.timeout);
  if (!(timeout > 0)) throw new UsageError(`--timeout must be a positive number of seconds`);

  const request = { prompt: positionals[0], stage_overrides: {} };
  if (values.seed !== undefined) {
    // A uint64 seed travels as a decimal *string*: a JS number is exact only
    // up to 2^53, and the loader (`longs: String`) reports it back as one.
    if (!/^\d+$/.test(values.seed) || BigInt(values.seed) > UINT64_MAX) {
      throw new UsageError(`--seed must be an integer from 0 to ${UINT64_MAX}`);
    }
    request.seed = BigInt(values.seed).toString(); // canonical: no leading zeros
  }
  for (const item of (values.steps ?? []).flatMap((s) => s.split(','))) {
    const match = /^([^=]+)=(\d+)$/.exec(item.trim());
    if (!match) throw new UsageError(`--steps takes STAGE=N, not ${item}`);
    // The key is the .proto name `stage_overrides`: the loader keeps field
    // names as written (`keepCase: true`); with its default camelCase this
    // object would be dropped without an error.
    request.stage_overrides[match[1]] = { steps: Number(match[2]) };
  }
  if (format.format) request.output = { format: format.format };

  return {
    addr: values.addr ?? process.env.VIDCASCADE_ADDR ?? '127.0.0.1:50051',
    apiKey: values['api-key'] ?? process.env.VIDCASCADE_API_KEY,
    timeout,
    formatName: values.format,
    out: values.out ?? format.out,
    request,
  };
}

// Progress on stderr: a line when a stage starts, then its percentage
// (rewritten in place on a terminal, every 25% otherwise).
function progressPrinter() {
  const tty = process.stderr.isTTY;
  const shown = new Map(); // stage#clip -> last percentage printed
  let clips = 1;
  let open = false; // a \r line is waiting for its newline
  const line = (text) => {
    if (open) process.stderr.write('\n');
    open = false;
    process.stderr.write(`${text}\n`);
  };
  const label = (stage, clip) => (clips > 1 ? `${stage} (clip ${clip})` : stage);
  return {
    onEvent(event) {
      switch (event.event) {
        case 'accepted': {
          const a = event.accepted;
          clips = a.clips || 1;
          const shape = a.output_shape;
          line(
            a.queue_position > 0
              ? `queued: ${a.queue_position} ahead (request ${a.request_id})`
              : `accepted: request ${a.request_id}, seed ${a.seed}` +
                  (shape ? `, ${shape.frames} frames ${shape.width}x${shape.height} @ ${shape.fps} fps` : '') +
                  (clips > 1 ? `, ${clips} clips` : ''),
          );
          break;
        }
        case 'stage_started': {
          const s = event.stage_started;
          const shape = s.output_shape;
          line(
            `${label(s.stage, s.clip)}: started` +
              (shape ? `, ${shape.frames} frames ${shape.width}x${shape.height}` : '') +
              (s.total_steps > 0 ? `, ${s.total_steps} step${s.total_steps === 1 ? '' : 's'}` : ''),
          );
          break;
        }
        case 'progress': {
          const p = event.progress;
          if (p.total_steps === 0) break;
          const percent = Math.floor((100 * p.step) / p.total_steps);
          const key = `${p.stage}#${p.clip}`;
          const last = shown.get(key) ?? -1;
          const text = `${label(p.stage, p.clip)}: ${String(percent).padStart(3)}% (step ${p.step}/${p.total_steps})`;
          if (tty) {
            process.stderr.write(`\r${text}`);
            open = true;
            if (percent === 100) line('');
          } else if (Math.floor(percent / 25) > Math.floor(last / 25)) {
            line(text);
          }
          shown.set(key, percent);
          break;
        }
        case 'completed':
          if (event.completed.timings.length > 0) {
            const t = event.completed.timings.map((x) => `${x.stage} ${x.run_ms} ms`).join(', ');
            line(`completed: ${t}`);
          }
          break;
        default:
          break;
      }
    },
  };
}

function writeOutput(opts, result) {
  if (opts.formatName === 'raw') {
    const v = result.video;
    if (!v) throw new Error('the gateway sent an encoded video although raw frames were asked for');
    vc.writeFrames(opts.out, v.frames.map((f) => vc.ppm(v.width, v.height, f)), vc.frameName('ppm'));
    return `${v.frames.length} PPM frames (${v.width}x${v.height} @ ${v.fps} fps) in ${opts.out}${path.sep}`;
  }
  const e = result.encoded;
  if (!e) {
    // A gateway older than `OutputOptions.format` ignores the field it does
    // not know and answers with raw frames.
    throw new Error(
      `the gateway sent raw frames, not ${opts.formatName}: it predates encoded output; use --format raw`,
    );
  }
  if (opts.formatName === 'png') {
    vc.writeFrames(opts.out, e.files, vc.frameName('png'));
    return `${e.files.length} PNG frames in ${opts.out}${path.sep}`;
  }
  if (e.files.length !== 1) throw new Error(`expected one ${opts.formatName} file, got ${e.files.length}`);
  fs.writeFileSync(opts.out, e.files[0]);
  return `${opts.out} (${e.media_type}, ${e.files[0].length} bytes)`;
}

async function main() {
  let opts;
  try {
    opts = parseCommandLine(process.argv.slice(2));
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`error: ${err.message}\n\n${USAGE}\n`);
    process.exit(2);
  }
  const client = vc.connect(opts.addr);
  try {
    const result = await vc.generate(client, opts.request, {
      apiKey: opts.apiKey,
      timeoutSeconds: opts.timeout,
      onEvent: progressPrinter().onEvent,
    });
    process.stderr.write(`wrote ${writeOutput(opts, result)}\n`);
  } catch (err) {
    // e.g. "error: INVALID_ARGUMENT: prompt must not be empty"
    process.stderr.write(`error: ${vc.describeError(err)}\n`);
    process.exitCode = 1;
  } finally {
    client.close();
  }
}

main();
