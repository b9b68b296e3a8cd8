'use strict';
// The parts of the example both generate.js and test.js use: loading the
// contract, connecting, one Generate call with its video reassembled, and
// readable errors.
//
// The contract is proto/vidcascade/v1/gateway.proto (which imports
// common.proto), loaded at run time from the repository, so this client always
// speaks the protos next to it; nothing is generated or copied.

const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

// Folder the proto imports are resolved against: `import
// "vidcascade/v1/common.proto"` in gateway.proto means
// <PROTO_DIR>/vidcascade/v1/common.proto.
const PROTO_DIR = path.join(__dirname, '..', '..', 'proto');

// @grpc/proto-loader's options. Its DEFAULTS DO NOT FIT THIS CONTRACT: with
// them the example would run without an error and still be wrong. Each option
// below is needed; see README.md ("Loader options") for the long version.
const LOADER_OPTIONS = {
  // Field names exactly as written in the .proto (`stage_overrides`,
  // `total_steps`, `request_id`), as in every other language's docs. The
  // default (false) renames them to camelCase, and an object keyed by the
  // .proto name is then *silently dropped* when serialized: a request with
  // `stage_overrides: {base: {steps: 3}}` reaches the gateway without
  // overrides, and `event.accepted.request_id` reads undefined.
  keepCase: true,
  // 64-bit integers (`seed`, `offset`, `file_bytes`, `*_ms`) as decimal
  // strings. The default hands out Long objects (`===` against a string
  // fails, `Number(long)` rounds), and a JS number cannot hold a uint64 seed:
  // above 2^53 it is rounded. So seeds are sent as strings too.
  longs: String,
  // Enums as their names ('STAGE_KIND_BASE', 'VIDEO_FORMAT_GIF'), not numbers,
  // both ways.
  enums: String,
  // Unset fields read as their proto3 defaults (0, '', [], {}; unset
  // messages as null) instead of being absent, so `stage_started.total_steps`
  // is 0 for the text encoder rather than undefined.
  defaults: true,
  // Each oneof gets a virtual field naming its set member: `event.event` is
  // 'accepted', 'stage_started', ..., 'completed'. (Proto3 `optional` fields
  // are synthetic oneofs, so decoded messages also carry e.g. `_steps:
  // 'steps'`; ignore those.)
  oneofs: true,
  // Where `import "vidcascade/v1/common.proto"` is looked up.
  includeDirs: [PROTO_DIR],
};

const packageDefinition = protoLoader.loadSync('vidcascade/v1/gateway.proto', LOADER_OPTIONS);
const v1 = grpc.loadPackageDefinition(packageDefinition).vidcascade.v1;

// A Gateway client for `addr`: `host:port` or `http://host:port` (plaintext,
// as `vidcascade serve` prints it), or `https://host:port` (TLS, system roots).
function connect(addr) {
  let target = addr;
  let credentials = grpc.credentials.createInsecure();
  if (target.startsWith('https://')) {
    target = target.slice('https://'.length);
    credentials = grpc.credentials.createSsl();
  } else if (target.startsWith('http://')) {
    target = target.slice('http://'.length);
  }
  target = target.replace(/\/+$/, '');
  return new v1.Gateway(target, credentials);
}

// Call metadata: the API key, when there is one, as `authorization: Bearer KEY`.
function metadata(apiKey) {
  const md = new grpc.Metadata();
  if (apiKey) md.set('authorization', `Bearer ${apiKey}`);
  return md;
}

// Call options: a deadline `seconds` from now. The gateway splits it across
// the stages and cancels them all when it passes.
function callOptions(seconds) {
  return { deadline: new Date(Date.now() + seconds * 1000) };
}

// `Gateway.Info` as a promise.
function info(client, { apiKey, timeoutSeconds = 30 } = {}) {
  return new Promise((resolve, reject) => {
    client.Info({}, metadata(apiKey), callOptions(timeoutSeconds), (err, reply) =>
      err ? reject(err) : resolve(reply),
    );
  });
}

// The names of the diffusion stages (every stage but the text encoder), in
// cascade order: the keys `stage_overrides` accepts.
function diffusionStages(gatewayInfo) {
  return gatewayInfo.stages.filter((stage) => stage.kind !== 'STAGE_KIND_TEXT_ENCODER');
}

// Reassembles a raw video from its `Video` chunks (RGB8 frames), checking the
// chunking rules of common.proto as it goes.
class RawVideoAssembler {
  constructor() {
    this.width = 0;
    this.height = 0;
    this.fps = 0;
    this.total_frames = 0;
    this.frames = [];
  }

  add(video) {
    if (this.frames.length === 0) {
      if (video.first_frame_index !== 0) {
        throw new Error(`first video chunk starts at frame ${video.first_frame_index}, not 0`);
      }
      if (video.width < 1 || video.height < 1 || video.total_frames < 1) {
        throw new Error(
          `video chunk has shape ${video.width}x${video.height}, ${video.total_frames} frames`,
        );
      }
      ({ width: this.width, height: this.height, fps: this.fps } = video);
      this.total_frames = video.total_frames;
    } else {
      for (const key of ['width', 'height', 'fps', 'total_frames']) {
        if (video[key] !== this[key]) {
          throw new Error(`video chunk has ${key} ${video[key]}, earlier chunks ${this[key]}`);
        }
      }
      if (video.first_frame_index !== this.frames.length) {
        throw new Error(
          `video chunk starts at frame ${video.first_frame_index}, expected ${this.frames.length}`,
        );
      }
    }
    if (video.frames.length === 0) throw new Error('empty video chunk');
    if (this.frames.length + video.frames.length > this.total_frames) {
      throw new Error(`video chunks hold more than the ${this.total_frames} frames announced`);
    }
    const frameBytes = this.width * this.height * 3;
    video.frames.forEach((frame, i) => {
      if (frame.length !== frameBytes) {
        throw new Error(
          `frame ${video.first_frame_index + i} has ${frame.length} bytes, expected ${frameBytes}`,
        );
      }
    });
    this.frames.push(...video.frames);
  }

  get complete() {
    return this.total_frames > 0 && this.frames.length === this.total_frames;
  }
}

// A uint64 field (a decimal string, thanks to `longs: String`) as a JS number,
// for sizes and offsets, which fit easily.
function smallUint64(value, what) {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`${what} ${value} is out of range`);
  return n;
}

// Reassembles an encoded video (one GIF or MP4, or one PNG per frame) from its
// `EncodedVideo` pieces: files in order, each as consecutive byte ranges.
class EncodedVideoAssembler {
  constructor() {
    this.format = null;
    this.media_type = '';
    this.shape = null;
    this.file_count = 0;
    this.files = []; // Buffers of the files that are whole
    this.current = null; // { index, size, chunks, received } of the file in transit
  }

  add(piece) {
    if (this.format === null) {
      if (piece.file_count < 1) throw new Error('encoded video with file_count 0');
      this.format = piece.format;
      this.media_type = piece.media_type;
      this.shape = piece.shape;
      this.file_count = piece.file_count;
    } else if (piece.format !== this.format || piece.file_count !== this.file_count) {
      throw new Error(
        `encoded piece is ${piece.format} of ${piece.file_count} files, ` +
          `earlier pieces ${this.format} of ${this.file_count}`,
      );
    }
    if (this.complete) throw new Error('encoded piece after the video was whole');
    const offset = smallUint64(piece.offset, 'offset');
    const size = smallUint64(piece.file_bytes, 'file_bytes');
    if (this.current === null) {
      // A new file starts: the next one, from byte 0.
      if (piece.file_index !== this.files.length || offset !== 0) {
        throw new Error(
          `encoded piece is file ${piece.file_index} at offset ${offset}; ` +
            `expected file ${this.files.length} at offset 0`,
        );
      }
      this.current = { index: piece.file_index, size, chunks: [], received: 0 };
    } else if (
      piece.file_index !== this.current.index ||
      offset !== this.current.received ||
      size !== this.current.size
    ) {
      throw new Error(
        `encoded piece is file ${piece.file_index} at offset ${offset} of ${size} bytes; ` +
          `expected file ${this.current.index} at offset ${this.current.received} ` +
          `of ${this.current.size} bytes`,
      );
    }
    const file = this.current;
    if (file.received + piece.data.length > file.size) {
      throw new Error(`file ${file.index} gets more than its ${file.size} bytes`);
    }
    file.chunks.push(piece.data);
    file.received += piece.data.length;
    if (file.received === file.size) {
      this.files.push(Buffer.concat(file.chunks, file.size));
      this.current = null;
    }
  }

  get complete() {
    return this.file_count > 0 && this.files.length === this.file_count;
  }
}

// Runs one `Gateway.Generate` call and resolves, once the stream has ended
// with OK, to
//   { accepted, started: [StageStarted], timings: [StageTiming],
//     video: RawVideoAssembler | null, encoded: EncodedVideoAssembler | null }
// where exactly one of `video` (raw frames) and `encoded` is set, whichever
// the gateway sent. A gateway that predates `OutputOptions.format` ignores
// the field and sends raw frames. Rejects with the gRPC error (err.code,
// err.details) or an Error when the stream breaks the contract.
//
// `onEvent(event)` sees every event as it arrives (for progress output).
function generate(client, request, { apiKey, timeoutSeconds = 120, onEvent } = {}) {
  return new Promise((resolve, reject) => {
    const call = client.Generate(request, metadata(apiKey), callOptions(timeoutSeconds));
    const result = { accepted: null, started: [], timings: [], video: null, encoded: null };
    let failed = false;
    const fail = (err) => {
      if (failed) return;
      failed = true;
      call.cancel();
      reject(err);
    };

    call.on('data', (event) => {
      if (failed) return;
      try {
        if (onEvent) onEvent(event);
        // `oneofs: true` makes `event.event` the name of the member set.
        switch (event.event) {
          case 'accepted':
            result.accepted = event.accepted; // re-sent while queued
            break;
          case 'stage_started':
            result.started.push(event.stage_started);
            break;
          case 'completed': {
            const completed = event.completed;
            if (completed.encoded) {
              if (result.video) throw new Error('encoded piece after raw video chunks');
              result.encoded ??= new EncodedVideoAssembler();
              result.encoded.add(completed.encoded);
            } else if (completed.video) {
              if (result.encoded) throw new Error('raw video chunk after encoded pieces');
              result.video ??= new RawVideoAssembler();
              result.video.add(completed.video);
            } else {
              throw new Error('completed event with neither video nor encoded');
            }
            if (completed.timings.length > 0) result.timings = completed.timings;
            break;
          }
          default:
            // progress, preview, stage_completed: only onEvent cares.
            break;
        }
      } catch (err) {
        fail(err);
      }
    });
    call.on('error', fail);
    // Done once the status is OK *and* every message has been read: grpc-js
    // may emit 'status' while messages are still buffered, and 'end' comes
    // after the last 'data'. (A failed call emits 'error' instead.)
    let statusOk = false;
    let ended = false;
    const finish = () => {
      if (failed || !statusOk || !ended) return;
      const video = result.video ?? result.encoded;
      if (!result.accepted) return fail(new Error('stream ended without an accepted event'));
      if (!video || !video.complete) {
        return fail(new Error('stream ended before the final video was whole'));
      }
      resolve(result);
    };
    call.on('status', (status) => {
      statusOk = status.code === grpc.status.OK;
      finish();
    });
    call.on('end', () => {
      ended = true;
      finish();
    });
  });
}

// A gRPC error as `CODE_NAME: message`; other errors as their message.
function describeError(err) {
  if (err && typeof err.code === 'number' && err.code in grpc.status) {
    return `${grpc.status[err.code]}: ${err.details || err.message}`;
  }
  return err && err.message ? err.message : String(err);
}

// A binary PPM (P6) of one RGB8 frame.
function ppm(width, height, rgb) {
  return Buffer.concat([Buffer.from(`P6\n${width} ${height}\n255\n`, 'ascii'), rgb]);
}

// Writes `name(i)` = `buffers[i]` into directory `dir` (created if missing).
function writeFrames(dir, buffers, name) {
  fs.mkdirSync(dir, { recursive: true });
  buffers.forEach((buffer, i) => fs.writeFileSync(path.join(dir, name(i)), buffer));
}

// frame-0000.<ext>, frame-0001.<ext>, ...
function frameName(ext) {
  return (i) => `frame-${String(i).padStart(4, '0')}.${ext}`;
}

module.exports = {
  LOADER_OPTIONS,
  PROTO_DIR,
  grpc,
  v1,
  connect,
  metadata,
  info,
  diffusionStages,
  generate,
  describeError,
  RawVideoAssembler,
  EncodedVideoAssembler,
  ppm,
  writeFrames,
  frameName,
};
