// The console's behaviour, in plain JavaScript (an ES module, no library, no build step).
// The pages are rendered on the server and work as plain forms; this adds keyboard
// shortcuts, bulk selection, the live run view (Server-Sent Events, polling as a fallback)
// and the drag-and-drop upload, which sends the file to the API with the session's CSRF token.

const body = document.body;
const csrf = body.dataset.csrf || "";
const csrfHeader = body.dataset.csrfHeader || "X-CSRF-Token";

function typing(event) {
  const el = event.target;
  return el instanceof HTMLElement &&
    (el.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(el.tagName));
}

function modified(event) {
  return event.ctrlKey || event.metaKey || event.altKey;
}

// --- review queue: j/k, Enter, x, a/r/p on the current row; select all --------------------

function setupQueue() {
  const table = document.getElementById("queue");
  if (!table) return;
  const rows = Array.from(table.querySelectorAll("tbody tr"));
  let current = -1;
  const select = (index) => {
    if (!rows.length) return;
    current = Math.max(0, Math.min(rows.length - 1, index));
    rows.forEach((row, i) => row.classList.toggle("current", i === current));
    rows[current].querySelector("a").focus();
  };
  const rowAction = (action) => {
    const form = document.getElementById("row-action");
    if (!form || current < 0) return;
    const row = rows[current];
    form.action = `/console/items/${row.dataset.id}/${action}`;
    form.submit();
  };
  document.addEventListener("keydown", (event) => {
    if (typing(event) || modified(event)) return;
    const keys = {
      j: () => select(current + 1),
      k: () => select(current - 1),
      x: () => {
        const box = rows[current]?.querySelector("input[type=checkbox]");
        if (box) box.checked = !box.checked;
      },
      a: () => rowAction("approve"),
      r: () => rowAction("reject"),
      p: () => rowAction("promote"),
    };
    const run = keys[event.key];
    if (run) {
      event.preventDefault();
      run();
    }
  });
  const all = document.getElementById("select-all");
  if (all) {
    all.addEventListener("change", () => {
      table.querySelectorAll("input[name=ids]").forEach((box) => { box.checked = all.checked; });
    });
  }
}

// --- item page: a approve, p promote, r focuses the reject reason -------------------------

function setupItem() {
  const actions = document.getElementById("actions");
  if (!actions) return;
  const form = (name) => actions.querySelector(`form[data-action="${name}"]`);
  document.addEventListener("keydown", (event) => {
    if (typing(event) || modified(event)) return;
    if (event.key === "a" && form("approve")) {
      event.preventDefault();
      form("approve").requestSubmit();
    } else if (event.key === "p" && form("promote")) {
      event.preventDefault();
      form("promote").requestSubmit();
    } else if (event.key === "r" && form("reject")) {
      event.preventDefault();
      document.getElementById("reject-reason").focus();
    }
  });
}

// --- run page: live progress -------------------------------------------------------------

function setupRun() {
  const live = document.getElementById("live");
  if (!live || live.dataset.finished === "true") return;
  const api = live.dataset.api;
  const runId = live.dataset.run;
  const status = document.getElementById("run-status");
  const meter = live.querySelector(".progress");
  const bar = meter.querySelector(".bar");
  let failedBar = meter.querySelector(".bar.failed");
  let done = false;
  // A form sent from this page (cancel) navigates by itself: no reload may overtake it.
  let leaving = false;
  document.addEventListener("submit", () => { leaving = true; });

  const show = (state) => {
    status.textContent = state.status.replaceAll("_", " ");
    status.className = `status s-${state.status}`;
    const p = state.progress;
    for (const [name, value] of Object.entries(p)) {
      const cell = live.querySelector(`[data-counter="${name}"]`);
      if (cell) cell.textContent = value;
    }
    const pct = p.total ? Math.floor((p.processed / p.total) * 100) : 0;
    const ok = p.total ? ((p.successful + (p.skipped || 0)) / p.total) * 100 : 0;
    bar.style.width = `${ok}%`;
    if (p.failed && p.total) {
      if (!failedBar) {
        failedBar = document.createElement("div");
        failedBar.className = "bar failed";
        meter.append(failedBar);
      }
      failedBar.style.left = `${ok}%`;
      failedBar.style.width = `${(p.failed / p.total) * 100}%`;
    }
    meter.setAttribute("aria-valuenow", String(pct));
    meter.setAttribute("aria-valuetext", `${pct}% processed, ${p.failed} failed`);
  };
  // The page is rendered again once the run has finished: summary, errors, failed rows.
  const finish = () => {
    if (done) return;
    done = true;
    if (!leaving) window.location.reload();
  };
  const poll = async () => {
    while (!done) {
      try {
        const response = await fetch(`${api}/${runId}`, { headers: { Accept: "application/json" } });
        if (response.ok) {
          const run = (await response.json()).data;
          show(run);
          if (["completed", "completed_with_errors", "failed", "cancelled"].includes(run.status)) {
            finish();
            return;
          }
        }
      } catch (error) {
        // The server is restarting or the network is down: keep trying every second.
      }
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  };
  if (!("EventSource" in window)) {
    poll();
    return;
  }
  const stream = new EventSource(`${api}/${runId}/stream`);
  stream.addEventListener("progress", (event) => show(JSON.parse(event.data)));
  stream.addEventListener("end", () => {
    stream.close();
    finish();
  });
  stream.onerror = () => {
    // EventSource reconnects by itself after a dropped connection, but not after an HTTP
    // error answer: then it is closed, and the page polls instead.
    if (stream.readyState === EventSource.CLOSED && !done) poll();
  };
}

// --- upload: drag and drop, sent with fetch --------------------------------------------------

function setupUpload() {
  const form = document.getElementById("upload-form");
  if (!form) return;
  const input = document.getElementById("file");
  const zone = document.getElementById("dropzone");
  const chosen = document.getElementById("chosen-file");
  const error = document.getElementById("upload-error");
  const status = document.getElementById("upload-status");
  const submit = document.getElementById("upload-submit");
  const showChosen = () => {
    chosen.textContent = input.files.length ? `Chosen: ${input.files[0].name}` : "";
  };
  input.addEventListener("change", showChosen);
  ["dragenter", "dragover"].forEach((type) => zone.addEventListener(type, (event) => {
    event.preventDefault();
    zone.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((type) => zone.addEventListener(type, () => zone.classList.remove("over")));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    if (event.dataTransfer && event.dataTransfer.files.length) {
      input.files = event.dataTransfer.files;
      showChosen();
    }
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    if (!input.files.length) {
      error.textContent = "Choose a file first (or drop one on the box).";
      error.hidden = false;
      return;
    }
    const data = new FormData();
    data.append("file", input.files[0]);
    if (document.getElementById("dry-run").checked) data.append("dry_run", "1");
    const slug = encodeURIComponent(document.getElementById("importer").value);
    submit.disabled = true;
    status.hidden = false;
    try {
      const response = await fetch(`${form.dataset.api}/upload/${slug}`, {
        method: "POST",
        body: data,
        headers: { [csrfHeader]: csrf, Accept: "application/json" },
      });
      const answer = await response.json().catch(() => ({}));
      if (response.status === 202 && answer.data) {
        window.location.assign(`/console/runs/${answer.data.id}`);
        return;
      }
      error.textContent = answer.message || `The upload failed (HTTP ${response.status}).`;
    } catch (failure) {
      error.textContent = "The upload did not reach the server: check the connection and try again.";
    }
    error.hidden = false;
    status.hidden = true;
    submit.disabled = false;
  });
}

// --- copy buttons (a token shown once) ---------------------------------------------------

function setupCopy() {
  document.querySelectorAll("[data-copy]").forEach((button) => {
    button.addEventListener("click", async () => {
      const field = document.getElementById(button.dataset.copy);
      const note = document.getElementById("copied");
      field.select();
      try {
        await navigator.clipboard.writeText(field.value);
        if (note) note.textContent = "Copied.";
      } catch (error) {
        // No clipboard access (plain HTTP on another host): the text is selected instead.
        if (note) note.textContent = "Selected: press Ctrl+C (⌘C) to copy.";
      }
    });
  });
}

setupCopy();
setupQueue();
setupItem();
setupRun();
setupUpload();
