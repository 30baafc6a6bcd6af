// Upload a file to tusserver with tus-js-client, printing progress; stop it
// with Ctrl-C and run it again to continue where the server has it.
//
//   node upload.mjs FILE [ENDPOINT]      (default endpoint http://127.0.0.1:8080/files/)
//
// The upload URL is kept in .tus-urls.json under the file's fingerprint
// (path, size, modification time), which is how the next run finds it.
import * as fs from 'node:fs'
import * as path from 'node:path'
import { FileUrlStorage, Upload } from 'tus-js-client'

const [file, endpoint = 'http://127.0.0.1:8080/files/'] = process.argv.slice(2)
if (!file) {
  console.error('usage: node upload.mjs FILE [ENDPOINT]')
  process.exit(2)
}
const size = fs.statSync(file).size

const upload = new Upload(fs.createReadStream(file), {
  endpoint,
  // Chunks keep each request short behind proxies; a lost connection then
  // costs at most one chunk (tus-js-client retries and resumes by itself).
  chunkSize: 8 * 1024 * 1024,
  retryDelays: [0, 1000, 3000, 5000],
  metadata: { filename: path.basename(file), filetype: 'application/octet-stream' },
  urlStorage: new FileUrlStorage('.tus-urls.json'),
  // Forget the URL once done, so uploading the same file again makes a new upload.
  removeFingerprintOnSuccess: true,
  onUploadUrlAvailable() {
    console.log(`upload URL: ${upload.url}`)
  },
  onProgress(sent, total) {
    process.stdout.write(`\r${((sent / total) * 100).toFixed(1).padStart(5)}%  ${sent} of ${total} bytes`)
  },
  onSuccess() {
    console.log(`\ndone: ${upload.url}`)
  },
  onError(error) {
    console.error(`\nfailed: ${error}`)
    process.exitCode = 1
  },
})

process.on('SIGINT', async () => {
  await upload.abort()
  console.log('\nstopped; run the same command again to resume')
  process.exit(130)
})

const previous = await upload.findPreviousUploads()
if (previous.length > 0) {
  console.log(`resuming ${previous[0].uploadUrl}`)
  upload.resumeFromPreviousUpload(previous[0])
} else {
  console.log(`${size} bytes to ${endpoint}`)
}
upload.start()
