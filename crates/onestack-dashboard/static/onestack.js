// OneStack dashboard script. Pages work as plain HTML forms; this adds live instance status,
// image upload with progress, and the interactive serial console. Served as a file (the CSP
// allows no inline script); it never builds HTML from data (textContent only).
'use strict';

// Live status: elements marked data-status-of="<server id>" inside a [data-poll] container follow
// the server's status; a new or vanished server reloads the list.
function livePoll(container) {
  const url = container.dataset.poll;
  const tick = async () => {
    try {
      const r = await fetch(url, { credentials: 'same-origin' });
      if (r.ok) {
        const j = await r.json();
        const shown = new Map();
        for (const el of container.querySelectorAll('[data-status-of]')) {
          shown.set(el.dataset.statusOf, el);
        }
        let changed = false;
        const seen = new Set();
        for (const s of j.servers) {
          seen.add(s.id);
          const el = shown.get(s.id);
          if (!el) {
            if (container.dataset.pollAll !== undefined) changed = true;
            continue;
          }
          const txt = s.status + (s.task ? ` (${s.task})` : '');
          if (el.textContent !== txt) {
            el.textContent = txt;
            el.className = `status status-${s.status}`;
          }
        }
        for (const [id, el] of shown) {
          if (!seen.has(id)) {
            if (container.dataset.pollAll !== undefined) changed = true;
            el.textContent = 'DELETED';
            el.className = 'status status-DELETED';
          }
        }
        if (changed) {
          window.location.reload();
          return;
        }
      }
    } catch (e) {
      // The next tick tries again.
    }
    setTimeout(tick, 2000);
  };
  setTimeout(tick, 1500);
}

// Image upload: create the record, then PUT the file with progress.
function uploadForm(form) {
  const state = document.getElementById('upload-state');
  const bar = document.getElementById('upload-progress');
  const say = (text, error) => {
    state.textContent = text;
    state.className = error ? 'error' : '';
    state.setAttribute('role', error ? 'alert' : 'status');
  };
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const field = (n) => form.elements.namedItem(n);
    const file = field('file').files[0];
    if (!file) {
      say('Choose a file.', true);
      return;
    }
    const csrf = form.dataset.csrf;
    say('Creating the image…', false);
    let r;
    try {
      r = await fetch('/project/images/create', {
        method: 'POST',
        credentials: 'same-origin',
        headers: { 'content-type': 'application/json', 'x-csrf-token': csrf },
        body: JSON.stringify({ name: field('name').value, disk_format: field('disk_format').value }),
      });
    } catch (e) {
      say('The dashboard does not answer.', true);
      return;
    }
    const j = await r.json().catch(() => ({}));
    if (!r.ok) {
      say(j.error || `The image could not be created (${r.status}).`, true);
      return;
    }
    const xhr = new XMLHttpRequest();
    xhr.open('PUT', `/project/images/${encodeURIComponent(j.id)}/file`);
    xhr.setRequestHeader('x-csrf-token', csrf);
    xhr.setRequestHeader('content-type', 'application/octet-stream');
    bar.hidden = false;
    bar.value = 0;
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) {
        const pct = Math.floor((100 * e.loaded) / e.total);
        bar.value = pct;
        say(`Uploading… ${pct}%`, false);
      }
    };
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        bar.value = 100;
        say('Uploaded.', false);
        window.location.reload();
      } else {
        let msg = `The upload failed (${xhr.status}).`;
        try {
          msg = JSON.parse(xhr.responseText).error || msg;
        } catch (e) {
          // keep the generic message
        }
        say(msg, true);
      }
    };
    xhr.onerror = () => say('The upload was interrupted; the image stays queued (delete it or try again).', true);
    xhr.send(file);
  });
}

// A small terminal: output is shown as text (control sequences dropped), keys go to the serial
// port as a terminal would send them.
function terminal(el) {
  const state = document.getElementById('console-state');
  const decoder = new TextDecoder();
  const encoder = new TextEncoder();
  const MAX = 40000;
  let text = '';
  let ws = null;
  const show = (t) => {
    if (state) state.textContent = t;
  };
  // A byte-stream parser (sequences may be split across websocket frames): printable text is
  // kept, escape sequences (colours, cursor moves and queries) are dropped.
  let mode = 'text';
  const write = (chunk) => {
    for (const c of chunk) {
      if (mode === 'esc') {
        mode = c === '[' ? 'csi' : c === ']' ? 'osc' : (c === '(' || c === ')') ? 'charset' : 'text';
        continue;
      }
      if (mode === 'csi') {
        if (c >= '@' && c <= '~') mode = 'text';
        continue;
      }
      if (mode === 'osc') {
        if (c === '\x07' || c === '\x1b') mode = 'text';
        continue;
      }
      if (mode === 'charset') {
        mode = 'text';
        continue;
      }
      if (c === '\x1b') {
        mode = 'esc';
      } else if (c === '\b' || c === '\x7f') text = text.slice(0, -1);
      else if (c === '\n' || c === '\t' || c >= ' ') text += c;
    }
    if (text.length > MAX) text = text.slice(-MAX);
    el.textContent = text;
    el.scrollTop = el.scrollHeight;
  };
  const connect = () => {
    if (ws && ws.readyState <= 1) return;
    const scheme = window.location.protocol === 'https:' ? 'wss' : 'ws';
    ws = new WebSocket(`${scheme}://${window.location.host}${el.dataset.ws}`, ['binary']);
    ws.binaryType = 'arraybuffer';
    show('Connecting…');
    ws.onopen = () => {
      show('Connected: type into the console.');
      el.dataset.connected = 'yes';
    };
    ws.onmessage = (e) => {
      write(typeof e.data === 'string' ? e.data : decoder.decode(new Uint8Array(e.data), { stream: true }));
    };
    ws.onclose = () => {
      el.dataset.connected = 'no';
      show('Disconnected. Click the console to connect again.');
    };
  };
  const send = (s) => {
    if (ws && ws.readyState === 1) ws.send(encoder.encode(s));
  };
  const KEYS = {
    Enter: '\r', Backspace: '\x7f', Tab: '\t', Escape: '\x1b',
    ArrowUp: '\x1b[A', ArrowDown: '\x1b[B', ArrowRight: '\x1b[C', ArrowLeft: '\x1b[D',
    Home: '\x1b[H', End: '\x1b[F', Delete: '\x1b[3~',
  };
  el.addEventListener('focus', connect);
  el.addEventListener('click', connect);
  el.addEventListener('keydown', (e) => {
    let out = null;
    if (e.ctrlKey && !e.altKey && e.key.length === 1 && /[a-z@[\\\]^_]/i.test(e.key)) {
      out = String.fromCharCode(e.key.toUpperCase().charCodeAt(0) & 0x1f);
    } else if (KEYS[e.key]) {
      out = KEYS[e.key];
    } else if (e.key.length === 1 && !e.ctrlKey && !e.metaKey) {
      out = e.key;
    }
    if (out !== null) {
      e.preventDefault();
      send(out);
    }
  });
  el.addEventListener('paste', (e) => {
    e.preventDefault();
    send((e.clipboardData || window.clipboardData).getData('text'));
  });
}

document.addEventListener('DOMContentLoaded', () => {
  for (const c of document.querySelectorAll('[data-poll]')) livePoll(c);
  const up = document.getElementById('upload');
  if (up) uploadForm(up);
  const term = document.getElementById('console');
  if (term) terminal(term);
});
