// Resumes an upload with tus-js-client, sends one chunk, then calls
// upload.abort(true), which terminates the upload (DELETE), and prints what
// the termination came to as JSON: {"status": "terminated"} or the status and
// body of the response that refused it.
//
//   node abort.mjs <upload-url> <file>
import { readFile } from 'node:fs/promises'
import tus from 'tus-js-client'

const [url, file] = process.argv.slice(2)
if (!url || !file) {
  console.error('usage: node abort.mjs <upload-url> <file>')
  process.exit(2)
}

const data = await readFile(file)
const outcome = await new Promise((resolve) => {
  let aborted = false
  const upload = new tus.Upload(data, {
    uploadUrl: url,
    chunkSize: 1,
    retryDelays: [],
    onChunkComplete: () => {
      if (aborted) return
      aborted = true
      upload.abort(true).then(
        () => resolve({ status: 'terminated' }),
        (error) => {
          const response = error?.originalResponse
          resolve(
            response
              ? { status: response.getStatus(), body: response.getBody() }
              : { status: `no response: ${error}` },
          )
        },
      )
    },
    onSuccess: () => resolve({ status: 'finished before the abort' }),
    onError: (error) => resolve({ status: `upload failed: ${error}` }),
  })
  upload.start()
})
process.stdout.write(`${JSON.stringify(outcome)}\n`)
