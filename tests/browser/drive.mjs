// Drives Debian's Chromium with playwright-core through a list of steps and
// prints one JSON line with every step's result.
//
//   node drive.mjs '{"page": URL, "steps": [{"call": NAME, "args": {...}},
//                   {"click": SELECTOR}, {"reload": true}], "userDataDir": DIR}'
//
// A page other than the test page (which sets window.e2e) names the global
// it sets when ready with "ready", and is driven as a person would with
// {"choose": SELECTOR, "files": [PATH]} (click, pick the files in the file
// chooser that opens) and {"waitFor": SELECTOR}.
import { chromium } from 'playwright-core'

const spec = JSON.parse(process.argv[2])
const context = await chromium.launchPersistentContext(spec.userDataDir, {
  executablePath: spec.executablePath ?? '/usr/bin/chromium',
  headless: true,
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
  timeout: 60000,
})
const results = []
const console = []
try {
  const page = context.pages()[0] ?? (await context.newPage())
  page.on('console', (message) => console.push(`${message.type()}: ${message.text()}`))
  page.on('pageerror', (error) => console.push(`pageerror: ${error.message}`))
  page.setDefaultTimeout(60000)
  const ready = spec.ready ?? 'e2e'
  await page.goto(spec.page)
  await page.waitForFunction((name) => window[name] !== undefined, ready)
  for (const step of spec.steps) {
    if (step.call) {
      results.push(await page.evaluate(([name, args]) => window.e2e[name](args), [step.call, step.args ?? {}]))
    } else if (step.click) {
      await page.click(step.click)
      results.push({ clicked: step.click })
    } else if (step.choose) {
      const [chooser] = await Promise.all([page.waitForEvent('filechooser'), page.click(step.choose)])
      await chooser.setFiles(step.files)
      results.push({ chosen: step.files.length })
    } else if (step.waitFor) {
      await page.waitForSelector(step.waitFor)
      results.push({ found: step.waitFor })
    } else if (step.reload) {
      await page.reload()
      await page.waitForFunction((name) => window[name] !== undefined, ready)
      results.push({ reloaded: true })
    }
  }
} finally {
  await context.close()
}
process.stdout.write(JSON.stringify({ results, console }) + '\n')
