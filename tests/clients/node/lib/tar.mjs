// A minimal ustar writer (regular files only) with gzip: enough to pack a package the way
// `tar czf` does, without a dependency.
import { gzipSync } from 'node:zlib';

function header(name, size, mode) {
  const block = Buffer.alloc(512);
  const put = (text, at, length) => block.write(text, at, length, 'ascii');
  if (Buffer.byteLength(name) > 100) throw new Error(`${name}: names over 100 bytes need a prefix`);
  put(name, 0, 100);
  const field = (value, at, length) => put(value.toString(8).padStart(length - 1, '0'), at, length - 1);
  field(mode, 100, 8);
  field(0, 108, 8); // uid
  field(0, 116, 8); // gid
  field(size, 124, 12);
  field(Math.floor(Date.now() / 1000), 136, 12);
  put('        ', 148, 8); // the checksum counts itself as spaces
  put('0', 156, 1); // regular file
  put('ustar\u000000', 257, 8);
  let sum = 0;
  for (const byte of block) sum += byte;
  put(`${sum.toString(8).padStart(6, '0')}\u0000 `, 148, 8);
  return block;
}

/** files: [[name, contents (Buffer|string), mode]] -> a .tar.gz Buffer. */
export function targz(files) {
  const parts = [];
  for (const [name, contents, mode = 0o644] of files) {
    const data = Buffer.from(contents);
    parts.push(header(name, data.length, mode), data, Buffer.alloc((512 - (data.length % 512)) % 512));
  }
  parts.push(Buffer.alloc(1024)); // two zero blocks end the archive
  return gzipSync(Buffer.concat(parts));
}
