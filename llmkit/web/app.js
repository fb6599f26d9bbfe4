// llmkit web chat: talks to this server's own OpenAI API (/v1), keeps conversations in this
// browser (localStorage). Nothing a model or a user writes is ever run: user messages are shown
// as text, answers go through marked (raw HTML escaped) and then DOMPurify, and the page's
// Content-Security-Policy allows no inline script.
"use strict";

(() => {
  const STORE = "llmkit.chats";
  const CURRENT = "llmkit.current";
  const KEY = "llmkit.apiKey";
  const MODEL = "llmkit.model"; // the model picked, for every conversation of this browser
  const DEFAULTS = { system: "", temperature: "", max_tokens: "", top_p: "", seed: "", json: false };
  const NUMBERS = ["temperature", "max_tokens", "top_p", "seed"];

  const $ = (id) => document.getElementById(id);
  const ui = {
    sidebar: $("sidebar"), list: $("conversations"), newChat: $("new-chat"),
    openSidebar: $("open-sidebar"), closeSidebar: $("close-sidebar"),
    deleteChat: $("delete-chat"), exportChats: $("export-chats"), importFile: $("import-file"),
    title: $("title"), model: $("model"), picker: $("model-picker"), settingsToggle: $("settings-toggle"), settings: $("settings"),
    system: $("system"), temperature: $("temperature"), max_tokens: $("max-tokens"),
    top_p: $("top-p"), seed: $("seed"), json: $("json-mode"),
    messages: $("messages"), status: $("status"),
    form: $("composer-form"), composer: $("composer"), send: $("send"), stop: $("stop"),
    keyDialog: $("key-dialog"), keyForm: $("key-form"), keyReason: $("key-reason"),
    keyInput: $("key-input"), keyCancel: $("key-cancel"),
  };

  let apiKey = localStorage.getItem(KEY);
  let model = null; // the id requests name: the one picked, if the server lists it, else its first
  let running = null; // {controller, chat, answer} while an answer streams
  const views = new WeakMap(); // message -> its <article>

  // -- conversations, kept in localStorage -------------------------------------------------

  function uid() {
    return Date.now().toString(36) + Math.random().toString(36).slice(2, 10);
  }

  function text(value) {
    return typeof value === "string" ? value : value == null ? "" : String(value);
  }

  // A conversation as this page keeps it, from what storage or an imported file holds; throws
  // when it is not one. The CLI's `/save` format ({"messages": [...]}) is accepted too.
  function normalise(data) {
    if (!data || typeof data !== "object" || !Array.isArray(data.messages)) {
      throw new Error('a conversation needs a "messages" list');
    }
    const settings = { ...DEFAULTS };
    const given = data.settings && typeof data.settings === "object" ? data.settings : {};
    for (const name of ["system", ...NUMBERS]) settings[name] = text(given[name]);
    settings.json = given.json === true;
    const messages = [];
    for (const m of data.messages) {
      if (!m || typeof m !== "object" || typeof m.content !== "string") {
        throw new Error("each message needs a role and a text content");
      }
      if (m.role === "system") {
        if (!settings.system) settings.system = m.content;
      } else if (m.role === "user" || m.role === "assistant") {
        const kept = { role: m.role, content: m.content };
        if (m.role === "assistant") {
          kept.state = ["done", "stopped", "error"].includes(m.state) ? m.state : m.state === "streaming" ? "stopped" : "done";
          if (typeof m.model === "string") kept.model = m.model;
          if (typeof m.error === "string") kept.error = m.error;
          if (m.stats && typeof m.stats === "object") {
            kept.stats = {};
            for (const [k, v] of Object.entries(m.stats)) {
              if (typeof v === "number" || typeof v === "string" || v === null) kept.stats[k] = v;
            }
          }
        }
        messages.push(kept);
      } else {
        throw new Error(`unknown role ${JSON.stringify(m.role)}`);
      }
    }
    const now = Date.now();
    return {
      id: typeof data.id === "string" && data.id ? data.id : uid(),
      title: text(data.title).slice(0, 120),
      created: Number.isFinite(data.created) ? data.created : now,
      updated: Number.isFinite(data.updated) ? data.updated : now,
      settings,
      messages,
    };
  }

  function loadChats() {
    try {
      const stored = JSON.parse(localStorage.getItem(STORE) || "[]");
      if (!Array.isArray(stored)) return [];
      const out = [];
      for (const c of stored) {
        try { out.push(normalise(c)); } catch (e) { /* a damaged entry: skip it */ }
      }
      return out;
    } catch (e) {
      return [];
    }
  }

  let chats = loadChats();
  let current = null;

  function save() {
    try {
      localStorage.setItem(STORE, JSON.stringify(chats));
      localStorage.setItem(CURRENT, current.id);
    } catch (e) {
      showStatus(`Could not keep the conversations in this browser: ${e.message}`);
    }
  }

  function newChat(settings) {
    const now = Date.now();
    const chat = { id: uid(), title: "", created: now, updated: now, settings: { ...DEFAULTS, ...settings }, messages: [] };
    chats.unshift(chat);
    return chat;
  }

  function titleOf(chat) {
    if (chat.title) return chat.title;
    const first = chat.messages.find((m) => m.role === "user");
    return first ? first.content.trim().split("\n")[0].slice(0, 60) || "New chat" : "New chat";
  }

  function select(chat) {
    current = chat;
    save();
    renderAll();
    closeSidebar(false);
  }

  // -- rendering ---------------------------------------------------------------------------

  function node(tag, className, content) {
    const el = document.createElement(tag);
    if (className) el.className = className;
    if (content !== undefined) el.textContent = content;
    return el;
  }

  function button(label, onClick, className) {
    const b = node("button", className, label);
    b.type = "button";
    b.addEventListener("click", onClick);
    return b;
  }

  function escapeHtml(s) {
    return s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  }

  // Raw HTML in an answer is shown as the text it is, never as markup.
  const md = new marked.Marked({ gfm: true, renderer: { html: ({ text: raw }) => escapeHtml(raw) } });
  DOMPurify.addHook("afterSanitizeAttributes", (el) => {
    if (el.tagName === "A") {
      el.setAttribute("target", "_blank");
      el.setAttribute("rel", "noopener noreferrer");
    }
  });

  function markdown(source) {
    const fragment = DOMPurify.sanitize(md.parse(source), {
      RETURN_DOM_FRAGMENT: true,
      FORBID_TAGS: ["style", "form", "button", "textarea", "select", "dialog"],
      FORBID_ATTR: ["style"],
    });
    for (const pre of fragment.querySelectorAll("pre")) {
      const code = pre.querySelector("code") || pre;
      const copyButton = button("Copy", () => copy(code.textContent, copyButton), "copy-code");
      copyButton.setAttribute("aria-label", "Copy the code");
      pre.append(copyButton);
    }
    return fragment;
  }

  async function copy(value, from) {
    try {
      await navigator.clipboard.writeText(value);
    } catch (e) { // no clipboard API (a page on plain http from another machine)
      const area = node("textarea", "visually-hidden");
      area.value = value;
      document.body.append(area);
      area.select();
      document.execCommand("copy");
      area.remove();
    }
    const label = from.textContent;
    from.textContent = "Copied";
    setTimeout(() => { from.textContent = label; }, 1200);
  }

  function statsText(m) {
    const s = m.stats || {};
    const parts = [];
    if (typeof s.ttft === "number") parts.push(`first token ${s.ttft.toFixed(2)} s`);
    if (typeof s.tokens === "number") parts.push(`${s.counted ? "~" : ""}${s.tokens} tokens`);
    if (typeof s.tps === "number") parts.push(`${s.tps.toFixed(1)} tokens/s`);
    if (typeof s.cached === "number") parts.push(`${s.cached} of ${s.prompt} prompt tokens cached`);
    if (m.state === "stopped") parts.push("stopped");
    else if (m.state === "error") parts.push(`broken off: ${m.error || "error"}`);
    else if (s.finish === "length") parts.push("cut at max tokens");
    return parts.join(" · ");
  }

  function isLast(m) {
    return current.messages[current.messages.length - 1] === m;
  }

  function actionsOf(m) {
    const busy = running !== null;
    const out = [];
    if (m.role === "assistant") {
      if (m.state !== "streaming") out.push(button("Copy", (e) => copy(m.content, e.currentTarget), "copy"));
      if (isLast(m) && !busy) out.push(button("Regenerate", () => regenerate(m), "regenerate"));
    } else if (!busy) {
      out.push(button("Edit", () => edit(m), "edit"));
      if (isLast(m)) out.push(button("Answer", () => run(current), "answer"));
    }
    return out;
  }

  function messageView(m) {
    const article = node("article", `msg ${m.role}`);
    const who = m.role === "user" ? "You" : m.model || model || "Assistant";
    article.append(node("div", "role", who), node("div", "content"), node("div", "stats"), node("div", "actions"));
    views.set(m, article);
    fill(m);
    return article;
  }

  function fill(m) {
    const article = views.get(m);
    if (!article) return;
    const [, content, stats, actions] = article.children;
    article.dataset.state = m.role === "assistant" ? m.state || "done" : "done";
    if (m.role === "user") content.textContent = m.content;
    else content.replaceChildren(markdown(m.content));
    stats.textContent = m.role === "assistant" ? statsText(m) : "";
    actions.replaceChildren(...actionsOf(m));
  }

  function atBottom() {
    const box = ui.messages;
    return box.scrollHeight - box.scrollTop - box.clientHeight < 48;
  }

  function renderMessages() {
    ui.messages.replaceChildren();
    if (current.messages.length === 0) {
      ui.messages.append(node("p", "empty", model ? `Chat with ${model}` : "Start a conversation"));
    }
    for (const m of current.messages) ui.messages.append(messageView(m));
    ui.messages.scrollTop = ui.messages.scrollHeight;
  }

  function renderList() {
    const sorted = chats.slice().sort((a, b) => b.updated - a.updated);
    ui.list.replaceChildren(...sorted.map((chat) => {
      const item = node("li");
      const b = button(titleOf(chat), () => select(chat));
      b.setAttribute("aria-current", String(chat === current));
      item.append(b);
      return item;
    }));
  }

  function renderSettings() {
    const s = current.settings;
    for (const name of ["system", ...NUMBERS]) ui[name].value = s[name];
    ui.json.checked = s.json;
    ui.title.value = current.title;
    ui.title.placeholder = titleOf({ ...current, title: "" });
  }

  function renderAll() {
    renderList();
    renderSettings();
    renderMessages();
  }

  let fillTimer = null;
  function scheduleFill(m) {
    if (fillTimer !== null) return;
    fillTimer = setTimeout(() => {
      fillTimer = null;
      const stick = atBottom();
      fill(m);
      if (stick) ui.messages.scrollTop = ui.messages.scrollHeight;
    }, 40);
  }

  function showStatus(message, kind = "error") {
    ui.status.textContent = message;
    ui.status.className = kind;
    ui.status.hidden = false;
  }

  function hideStatus() {
    ui.status.hidden = true;
    ui.status.textContent = "";
  }

  // -- the API -----------------------------------------------------------------------------

  class HttpError extends Error {
    constructor(status, message, retryAfter) {
      super(message);
      this.status = status;
      this.retryAfter = retryAfter;
    }
  }

  class StreamError extends Error {}

  async function httpError(response) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) message = body.error.message;
    } catch (e) { /* not JSON */ }
    return new HttpError(response.status, message, response.headers.get("Retry-After"));
  }

  function explain(err) {
    if (err instanceof HttpError) {
      if (err.status === 503) {
        const when = err.retryAfter ? ` in ${err.retryAfter} s` : " shortly";
        return `The server is busy (503: ${err.message}). Try again${when}.`;
      }
      if (err.status === 401) return "This server needs an API key.";
      return `The server answered ${err.status}: ${err.message}`;
    }
    if (err instanceof StreamError) return `The answer broke off: ${err.message}`;
    return `Cannot reach the server at ${location.origin}: it may have stopped or the network is down.`;
  }

  let keyRequest = null;
  function askKey(refused) {
    if (keyRequest) return keyRequest;
    keyRequest = new Promise((resolve, reject) => {
      ui.keyReason.textContent = refused
        ? "The server refused that key: enter the right one."
        : "This server needs an API key.";
      ui.keyInput.value = "";
      ui.keyDialog.showModal();
      ui.keyInput.focus();
      const finish = (key) => {
        ui.keyForm.removeEventListener("submit", submit);
        ui.keyCancel.removeEventListener("click", cancel);
        ui.keyDialog.removeEventListener("cancel", cancel);
        ui.keyDialog.close();
        keyRequest = null;
        if (key) resolve(key);
        else reject(new HttpError(401, "no API key given"));
      };
      const submit = (e) => {
        e.preventDefault();
        const key = ui.keyInput.value.trim();
        if (key) finish(key);
      };
      const cancel = (e) => {
        e.preventDefault();
        finish(null);
      };
      ui.keyForm.addEventListener("submit", submit);
      ui.keyCancel.addEventListener("click", cancel);
      ui.keyDialog.addEventListener("cancel", cancel);
    });
    return keyRequest;
  }

  // fetch on /v1 with the kept API key; a 401 asks for a key (once kept, it is not asked again).
  async function api(path, init = {}) {
    for (;;) {
      const headers = new Headers(init.headers || {});
      if (apiKey) headers.set("Authorization", `Bearer ${apiKey}`);
      const response = await fetch(`/v1${path}`, { ...init, headers });
      if (response.status !== 401) return response;
      const refused = apiKey !== null;
      apiKey = null;
      localStorage.removeItem(KEY);
      apiKey = await askKey(refused);
      localStorage.setItem(KEY, apiKey);
    }
  }

  // The server-sent events of a streamed answer, as parsed JSON, up to `data: [DONE]`.
  async function* events(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      buffer += decoder.decode(value || new Uint8Array(), { stream: !done }).replace(/\r/g, "");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
        if (!data) continue;
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
      if (done) throw new StreamError("the connection closed before the answer finished");
    }
  }

  // The server's models into the picker, each with its state ("gemma-3-270m (unloaded)"); a
  // server that says no state (one model, loaded for good) has its models shown as loaded. With
  // one model there is nothing to pick: its name alone is shown.
  async function loadModels(quiet) {
    try {
      const response = await api("/models");
      if (!response.ok) throw await httpError(response);
      const body = await response.json();
      const cards = (Array.isArray(body.data) ? body.data : []).filter((c) => c && typeof c.id === "string");
      const ids = cards.map((c) => c.id);
      const picked = localStorage.getItem(MODEL);
      model = ids.includes(model) ? model : ids.includes(picked) ? picked : ids[0] || null;
      const same = ui.picker.options.length === ids.length && ids.every((id, i) => ui.picker.options[i].value === id);
      if (!same) ui.picker.replaceChildren(...ids.map((id) => node("option")));
      // Texts changed in place: rebuilding the options would close the list while it is open.
      cards.forEach((card, i) => {
        const option = ui.picker.options[i];
        option.value = card.id;
        option.textContent = `${card.id} (${typeof card.state === "string" ? card.state : "loaded"})`;
        if (card.state === "failed" && typeof card.error === "string") option.title = card.error;
      });
      if (model) ui.picker.value = model;
      ui.picker.hidden = ids.length < 2;
      ui.model.hidden = !ui.picker.hidden;
      ui.model.textContent = model || "no model";
      if (current.messages.length === 0 && !running) renderMessages();
    } catch (err) {
      if (quiet) return; // a refresh of the states: the next request says what is wrong
      ui.model.textContent = "not connected";
      showStatus(explain(err));
    }
  }

  function pick() {
    model = ui.picker.value;
    localStorage.setItem(MODEL, model);
    ui.model.textContent = model;
    if (current.messages.length === 0 && !running) renderMessages();
  }

  function requestBody(chat, count) {
    const s = chat.settings;
    const messages = [];
    if (s.system.trim()) messages.push({ role: "system", content: s.system });
    for (const m of chat.messages.slice(0, count)) messages.push({ role: m.role, content: m.content });
    const body = { model: model || "default", messages, stream: true, stream_options: { include_usage: true } };
    for (const name of NUMBERS) {
      if (s[name] !== "") body[name] = Number(s[name]); // the server checks the range (400 naming it)
    }
    if (s.json) body.response_format = { type: "json_object" };
    return body;
  }

  // Stream an answer to the chat's messages. If it fails before any text came, the turn did not
  // happen: the answer is removed and onFail puts things back (the user's text into the box).
  async function run(chat, onFail) {
    if (running) return;
    hideStatus();
    const count = chat.messages.length;
    const answer = { role: "assistant", content: "", state: "streaming", model: model || undefined };
    chat.messages.push(answer);
    chat.updated = Date.now();
    const controller = new AbortController();
    running = { controller, chat, answer };
    setRunning(true);
    save();
    if (chat === current) renderAll();
    const started = performance.now();
    let first = null;
    let chunks = 0;
    let usage = null;
    let finish = null;
    let failed = false;
    try {
      const response = await api("/chat/completions", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(requestBody(chat, count)),
        signal: controller.signal,
      });
      if (!response.ok) throw await httpError(response);
      for await (const event of events(response)) {
        if (event.error) throw new StreamError(event.error.message || "the server reported an error");
        if (event.usage) usage = event.usage;
        // Who answered, as the server names it (with several served: the model it ran).
        if (typeof event.model === "string" && event.model && answer.model !== event.model) {
          answer.model = event.model;
          views.get(answer)?.querySelector(".role")?.replaceChildren(event.model);
        }
        for (const choice of event.choices || []) {
          const piece = choice.delta && choice.delta.content;
          if (piece) {
            if (first === null) first = performance.now();
            answer.content += piece;
            chunks += 1;
            scheduleFill(answer);
          }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
      answer.state = "done";
    } catch (err) {
      if (err.name === "AbortError") {
        answer.state = "stopped";
      } else if (!answer.content && !(err instanceof StreamError)) {
        failed = true;
        chat.messages.splice(count);
        const restored = onFail ? onFail() : false;
        showStatus(explain(err) + (restored ? " Your message is back in the box below." : ""));
      } else {
        answer.state = "error";
        answer.error = err.message;
        showStatus(explain(err));
      }
    } finally {
      const ended = performance.now();
      if (!failed) {
        const tokens = usage ? usage.completion_tokens : chunks;
        const details = usage && usage.prompt_tokens_details;
        answer.stats = {
          ttft: first === null ? null : (first - started) / 1000,
          tokens,
          counted: !usage,
          tps: first !== null && tokens >= 2 && ended > first ? (tokens - 1) / ((ended - first) / 1000) : null,
          prompt: usage ? usage.prompt_tokens : null,
          cached: details && typeof details.cached_tokens === "number" ? details.cached_tokens : null,
          finish,
        };
      }
      clearTimeout(fillTimer);
      fillTimer = null;
      running = null;
      chat.updated = Date.now();
      setRunning(false);
      save();
      if (chat === current) renderAll();
      loadModels(true); // the states changed: the one asked is loaded now, another may not be
    }
  }

  function setRunning(on) {
    const hadFocus = document.activeElement === ui.send || document.activeElement === ui.stop;
    ui.send.hidden = on;
    ui.stop.hidden = !on;
    ui.messages.setAttribute("aria-busy", String(on));
    if (hadFocus) (on ? ui.stop : ui.composer).focus();
  }

  function stop() {
    if (running) running.controller.abort();
  }

  function submit() {
    const value = ui.composer.value;
    if (!value.trim() || running) return;
    const chat = current;
    const question = { role: "user", content: value };
    chat.messages.push(question);
    ui.composer.value = "";
    run(chat, () => {
      const at = chat.messages.lastIndexOf(question);
      if (at >= 0) chat.messages.splice(at, 1);
      const typed = ui.composer.value;
      ui.composer.value = typed ? `${value}\n${typed}` : value;
      ui.composer.focus();
      return true;
    });
  }

  function regenerate(m) {
    const chat = current;
    const at = chat.messages.indexOf(m);
    const old = chat.messages.splice(at);
    run(chat, () => { chat.messages.push(...old); return false; });
  }

  function edit(m) {
    const article = views.get(m);
    const content = article.children[1];
    const actions = article.children[3];
    const area = node("textarea");
    area.value = m.content;
    area.setAttribute("aria-label", "Edit the message");
    const box = node("div", "edit");
    box.append(area);
    content.replaceChildren(box);
    const resend = () => {
      if (!area.value.trim() || running) return;
      const at = current.messages.indexOf(m);
      m.content = area.value;
      current.messages.splice(at + 1);
      run(current);
    };
    const cancel = () => fill(m);
    area.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); resend(); }
      else if (e.key === "Escape") { e.preventDefault(); cancel(); }
    });
    actions.replaceChildren(button("Send", resend, "primary resend"), button("Cancel", cancel));
    area.focus();
  }

  // -- the sidebar: list, new, rename, delete, export, import ------------------------------

  function openSidebar() {
    ui.sidebar.classList.add("open");
    ui.openSidebar.setAttribute("aria-expanded", "true");
    ui.newChat.focus();
  }

  function closeSidebar(refocus) {
    if (!ui.sidebar.classList.contains("open")) return;
    ui.sidebar.classList.remove("open");
    ui.openSidebar.setAttribute("aria-expanded", "false");
    if (refocus) ui.openSidebar.focus();
  }

  function startNewChat() {
    if (current.messages.length > 0) select(newChat(current.settings));
    else closeSidebar(false);
    ui.composer.focus();
  }

  function deleteCurrent() {
    if (!window.confirm(`Delete “${titleOf(current)}”?`)) return;
    if (running && running.chat === current) stop();
    chats = chats.filter((c) => c !== current);
    select(chats.slice().sort((a, b) => b.updated - a.updated)[0] || newChat());
  }

  function exportChats() {
    const data = { format: "llmkit-chats", version: 1, exported: new Date().toISOString(), conversations: chats };
    const blob = new Blob([JSON.stringify(data, null, 2)], { type: "application/json" });
    const link = node("a");
    link.href = URL.createObjectURL(blob);
    link.download = `llmkit-chats-${new Date().toISOString().slice(0, 10)}.json`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  }

  async function importChats() {
    const file = ui.importFile.files[0];
    ui.importFile.value = "";
    if (!file) return;
    try {
      const data = JSON.parse(await file.text());
      const list = Array.isArray(data) ? data : data && Array.isArray(data.conversations) ? data.conversations : [data];
      const known = new Set(chats.map((c) => c.id));
      const imported = list.map(normalise).map((c) => (known.has(c.id) ? { ...c, id: uid() } : c));
      if (imported.length === 0) throw new Error("it holds no conversation");
      if (current.messages.length === 0 && !current.title) chats = chats.filter((c) => c !== current);
      chats.push(...imported);
      select(imported[0]);
      showStatus(`Imported ${imported.length} conversation${imported.length === 1 ? "" : "s"} from ${file.name}.`, "note");
    } catch (err) {
      showStatus(`Cannot import ${file.name}: ${err.message}`);
    }
  }

  // -- wiring ------------------------------------------------------------------------------

  ui.form.addEventListener("submit", (e) => { e.preventDefault(); submit(); });
  ui.composer.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing && !e.ctrlKey && !e.altKey && !e.metaKey) {
      e.preventDefault();
      submit();
    } else if (e.key === "Escape" && running) {
      e.preventDefault();
      stop();
    }
  });
  ui.stop.addEventListener("click", () => { stop(); ui.composer.focus(); });
  ui.newChat.addEventListener("click", startNewChat);
  ui.deleteChat.addEventListener("click", deleteCurrent);
  ui.exportChats.addEventListener("click", exportChats);
  ui.importFile.addEventListener("change", importChats);
  ui.openSidebar.addEventListener("click", openSidebar);
  ui.closeSidebar.addEventListener("click", () => closeSidebar(true));
  ui.sidebar.addEventListener("keydown", (e) => { if (e.key === "Escape") closeSidebar(true); });
  ui.title.addEventListener("input", () => {
    current.title = ui.title.value.trim();
    save();
    renderList();
  });
  ui.settingsToggle.addEventListener("click", () => {
    const show = ui.settings.hidden;
    ui.settings.hidden = !show;
    ui.settingsToggle.setAttribute("aria-expanded", String(show));
    if (show) ui.system.focus();
  });
  for (const name of ["system", ...NUMBERS]) {
    ui[name].addEventListener("input", () => { current.settings[name] = ui[name].value; save(); });
  }
  ui.json.addEventListener("change", () => { current.settings.json = ui.json.checked; save(); });
  ui.picker.addEventListener("change", pick);
  ui.picker.addEventListener("focus", () => loadModels(true)); // states as they are now
  document.addEventListener("keydown", (e) => {
    if (e.key.toLowerCase() === "o" && e.shiftKey && (e.ctrlKey || e.metaKey)) { // as other chat apps
      e.preventDefault();
      startNewChat();
    }
  });

  current = chats.find((c) => c.id === localStorage.getItem(CURRENT)) || chats[0] || newChat();
  renderAll();
  ui.composer.focus();
  loadModels(false);
})();
