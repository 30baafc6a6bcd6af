// Another user's requests on an upload URL, sent by tus-js-client itself,
// and the status each got, as JSON: {"head", "patch", "delete", "get"}.
//
//   node foreign.mjs <upload-url> <size> <owner-token> <other-token>
//
// HEAD: the other user's client resumes the URL. PATCH: the owner's client
// resumes (its HEAD passes) and its PATCH goes out with the other user's
// token. DELETE: tus.Upload.terminate. GET: tus-js-client's own HTTP stack.
import tus from 'tus-js-client'

const [url, size, ownerToken, otherToken] = process.argv.slice(2)
if (!url || !size || !ownerToken || !otherToken) {
  console.error('usage: node foreign.mjs <upload-url> <size> <owner-token> <other-token>')
  process.exit(2)
}
const other = `Bearer ${otherToken}`
const data = Buffer.alloc(Number(size))
const statusOf = (error) => error?.originalResponse?.getStatus() ?? `no response: ${error}`

function resume(options) {
  return new Promise((resolve) => {
    const upload = new tus.Upload(data, {
      uploadUrl: url,
      retryDelays: [],
      ...options,
      onSuccess: () => resolve('succeeded'),
      onError: (error) => resolve(statusOf(error)),
    })
    upload.start()
  })
}

const head = await resume({ headers: { Authorization: other } })
const patch = await resume({
  headers: { Authorization: `Bearer ${ownerToken}` },
  onBeforeRequest: (request) => {
    if (request.getMethod() === 'PATCH') request.setHeader('Authorization', other)
  },
})
const deleted = await tus.Upload.terminate(url, { headers: { Authorization: other }, retryDelays: [] })
  .then(() => 'succeeded', statusOf)
const request = new tus.DefaultHttpStack({}).createRequest('GET', url)
request.setHeader('Authorization', other)
const get = (await request.send(null)).getStatus()

process.stdout.write(`${JSON.stringify({ head, patch, delete: deleted, get })}\n`)
