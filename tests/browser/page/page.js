// Scenarios the end-to-end tests call through playwright's page.evaluate.
// Each returns a plain JSON-able result; failures are results too ({error}),
// so the Python side can assert on them.
import Uppy from '@uppy/core'
import Dashboard from '@uppy/dashboard'
import Tus from '@uppy/tus'
import * as tus from 'tus-js-client'
import '@uppy/core/css/style.min.css'
import '@uppy/dashboard/css/style.min.css'

// xorshift32, four bytes little-endian per step; tests/e2e_clients.py has
// the same generator, so the expected bytes never travel through the page.
function pseudoRandomBytes(size, seed) {
  const bytes = new Uint8Array(size)
  let x = seed >>> 0 || 1
  for (let i = 0; i < size; i += 4) {
    x ^= x << 13
    x >>>= 0
    x ^= x >>> 17
    x ^= x << 5
    x >>>= 0
    for (let k = 0; k < 4 && i + k < size; k++) bytes[i + k] = (x >>> (8 * k)) & 255
  }
  return bytes
}

// A File, not a Blob: tus-js-client fingerprints name, type, size and
// lastModified, so the same arguments after a reload find the stored URL.
function makeFile({ size, seed, name }) {
  return new File([pseudoRandomBytes(size, seed)], name, {
    type: 'application/octet-stream',
    lastModified: 1700000000000,
  })
}

// Records what tus-js-client sent, so a test can check where it resumed.
function recorder() {
  const requests = []
  return {
    requests,
    onBeforeRequest(req) {
      requests.push({ method: req.getMethod(), offset: req.getHeader('Upload-Offset') ?? null })
    },
  }
}

function tusOptions({ endpoint, chunkSize, parallelUploads, retryDelays }, rec, extra) {
  return {
    endpoint,
    chunkSize: chunkSize ?? Number.POSITIVE_INFINITY,
    parallelUploads: parallelUploads ?? 1,
    retryDelays: retryDelays ?? [0, 200, 500],
    metadata: { filename: 'e2e.bin', filetype: 'application/octet-stream' },
    onBeforeRequest: rec.onBeforeRequest,
    ...extra,
  }
}

// One whole upload with tus-js-client: {url, requests} or {error, requests}.
async function tusUpload(params) {
  const rec = recorder()
  const file = makeFile(params)
  return new Promise((resolve) => {
    const upload = new tus.Upload(
      file,
      tusOptions(params, rec, {
        onSuccess: () => resolve({ url: upload.url, requests: rec.requests }),
        onError: (error) => resolve({ error: String(error), requests: rec.requests }),
      }),
    )
    upload.start()
  })
}

// Starts a chunked upload and aborts it once `abortAfter` bytes are
// accepted: the URL stays in localStorage under the file's fingerprint.
async function tusStartAndAbort(params) {
  const rec = recorder()
  const file = makeFile(params)
  return new Promise((resolve) => {
    const upload = new tus.Upload(
      file,
      tusOptions(params, rec, {
        onChunkComplete: (_chunk, accepted) => {
          if (accepted >= params.abortAfter) {
            upload.abort().then(() => resolve({ url: upload.url, accepted, requests: rec.requests }))
          }
        },
        onSuccess: () => resolve({ error: 'finished before it could be aborted' }),
        onError: (error) => resolve({ error: String(error) }),
      }),
    )
    upload.start()
  })
}

// The same file again (e.g. after a reload): resume from the stored URL.
async function tusResume(params) {
  const rec = recorder()
  const file = makeFile(params)
  return new Promise((resolve) => {
    const upload = new tus.Upload(
      file,
      tusOptions(params, rec, {
        onSuccess: () =>
          resolve({ url: upload.url, previous: previous.length, requests: rec.requests }),
        onError: (error) => resolve({ error: String(error), requests: rec.requests }),
      }),
    )
    let previous = []
    upload.findPreviousUploads().then((found) => {
      previous = found
      if (found.length > 0) upload.resumeFromPreviousUpload(found[0])
      upload.start()
    })
  })
}

// Uppy with the Dashboard on the page and the Tus plugin; the test clicks
// the Dashboard's upload button, then awaits uppyResult().
let uppyDone = null
// headers: sent with every request (an Authorization bearer token).
function uppyAdd({ endpoint, size, seed, name, chunkSize, headers }) {
  const uppy = new Uppy({ autoProceed: false })
    .use(Dashboard, { inline: true, target: '#dashboard', proudlyDisplayPoweredByUppy: false })
    .use(Tus, {
      endpoint,
      headers: headers ?? {},
      chunkSize: chunkSize ?? Number.POSITIVE_INFINITY,
      retryDelays: [0, 200],
    })
  uppyDone = new Promise((resolve) => uppy.on('complete', resolve))
  uppy.addFile({ name, type: 'application/octet-stream', data: makeFile({ size, seed, name }) })
  return { files: uppy.getFiles().length }
}

async function uppyResult() {
  const result = await uppyDone
  return {
    successful: result.successful.map((file) => ({ name: file.name, url: file.uploadURL })),
    failed: result.failed.map((file) => ({ name: file.name, error: String(file.error) })),
  }
}

window.e2e = { tusUpload, tusStartAndAbort, tusResume, uppyAdd, uppyResult }
