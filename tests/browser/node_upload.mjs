// tus-js-client in Node for the end-to-end specs. One JSON object per line
// on stdout: {"event": "url" | "chunk" | "done" | "error", ...}.
//
//   node node_upload.mjs '{"endpoint": URL, "file": PATH | null (stdin, deferred length),
//                          "chunkSize": N, "parallelUploads": N, "urlStorage": PATH,
//                          "retryDelays": [ms, ...]}'
import * as fs from 'node:fs'
import { FileUrlStorage, Upload } from 'tus-js-client'

const spec = JSON.parse(process.argv[2])
const emit = (event) => process.stdout.write(JSON.stringify(event) + '\n')
const requests = []

// A file is resumable across runs (fingerprint: path, size, mtime); stdin is
// a stream of unknown length, sent with Upload-Defer-Length.
const input = spec.file ? fs.createReadStream(spec.file) : process.stdin
const upload = new Upload(input, {
  endpoint: spec.endpoint,
  chunkSize: spec.chunkSize ?? Number.POSITIVE_INFINITY,
  parallelUploads: spec.parallelUploads ?? 1,
  uploadLengthDeferred: !spec.file,
  retryDelays: spec.retryDelays ?? [0, 200, 500],
  metadata: { filename: 'node.bin' },
  urlStorage: spec.urlStorage ? new FileUrlStorage(spec.urlStorage) : undefined,
  storeFingerprintForResuming: Boolean(spec.urlStorage),
  onBeforeRequest(req) {
    requests.push({ method: req.getMethod(), offset: req.getHeader('Upload-Offset') ?? null })
  },
  onUploadUrlAvailable() {
    emit({ event: 'url', url: upload.url })
  },
  onChunkComplete(_size, accepted) {
    emit({ event: 'chunk', accepted })
  },
  onSuccess() {
    emit({ event: 'done', url: upload.url, requests })
  },
  onError(error) {
    emit({ event: 'error', message: String(error), requests })
    process.exitCode = 1
  },
})

if (spec.urlStorage) {
  const previous = await upload.findPreviousUploads()
  if (previous.length > 0) upload.resumeFromPreviousUpload(previous[0])
}
upload.start()
