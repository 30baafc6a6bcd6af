// Uploads one file with tus-js-client and prints the upload URL as JSON.
//
//   node upload.mjs <endpoint> <file> [options-json]
//
// options-json is merged into the tus.Upload options (parallelUploads,
// chunkSize, metadata, ...). Retries are off unless the options ask for them,
// so a server error fails the run instead of being retried away.
// requestDelayMs (not a tus-js-client option) slows every request down.
// Exit status 0 with {"url": ...} on stdout, or 1 with the error on stderr.
import { readFile } from 'node:fs/promises'
import tus from 'tus-js-client'

const [endpoint, file, optionsJson = '{}'] = process.argv.slice(2)
if (!endpoint || !file) {
  console.error('usage: node upload.mjs <endpoint> <file> [options-json]')
  process.exit(2)
}

const data = await readFile(file)
const { requestDelayMs, ...options } = JSON.parse(optionsJson)
// requestDelayMs: wait this long before every request, so that an upload
// lasts long enough for a spec to fail a Redis over while it runs.
if (requestDelayMs) {
  options.onBeforeRequest = () => new Promise((resolve) => setTimeout(resolve, requestDelayMs))
}

await new Promise((resolve) => {
  const upload = new tus.Upload(data, {
    endpoint,
    retryDelays: [],
    ...options,
    onSuccess: () => {
      process.stdout.write(`${JSON.stringify({ url: upload.url })}\n`)
      resolve()
    },
    onError: (error) => {
      console.error(`upload failed: ${error}`)
      process.exitCode = 1
      resolve()
    },
  })
  upload.start()
})
