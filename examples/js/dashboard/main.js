// An Uppy Dashboard uploading to tusserver with the Tus plugin. Resumable
// URLs live in localStorage: reload the page mid-upload, add the same file,
// and it continues.
import Uppy from '@uppy/core'
import Dashboard from '@uppy/dashboard'
import Tus from '@uppy/tus'
import '@uppy/core/css/style.min.css'
import '@uppy/dashboard/css/style.min.css'

const endpoint =
  new URLSearchParams(window.location.search).get('endpoint') ?? 'http://127.0.0.1:8080/files/'

const uppy = new Uppy({ debug: false, autoProceed: false })
  .use(Dashboard, { inline: true, target: '#dashboard', showProgressDetails: true })
  .use(Tus, { endpoint, chunkSize: 8 * 1024 * 1024, retryDelays: [0, 1000, 3000, 5000] })

uppy.on('complete', (result) => {
  for (const file of result.successful) console.log(`${file.name}: ${file.uploadURL}`)
})

window.uppy = uppy
