// The moe-market dashboard: polls the gateway's JSON API every 2 s and redraws the page.
// Plain JavaScript, no build step and nothing fetched from elsewhere. Every value from the API is put into
// the page with textContent (never as HTML). Wei amounts arrive as decimal strings and are handled as BigInt.
"use strict";

const POLL_MS = 2000;
const ETHER = 10n ** 18n;
const GWEI = 10n ** 9n;

const $ = (id) => document.getElementById(id);

function wei(value) {
  try {
    return BigInt(value ?? 0);
  } catch (_) {
    return 0n;
  }
}

// 1234500000000000000 -> "1.2345 ETH", 1000000000 -> "1 gwei", small amounts in wei.
function formatWei(value) {
  const v = wei(value);
  if (v === 0n) return "0";
  if (v < GWEI) return `${v} wei`;
  if (v < ETHER / 1000n) return `${trimDecimal(v, GWEI, 3)} gwei`;
  return `${trimDecimal(v, ETHER, 4)} ETH`;
}

function trimDecimal(v, unit, digits) {
  const whole = v / unit;
  const scale = 10n ** BigInt(digits);
  const frac = ((v % unit) * scale) / unit;
  let text = frac.toString().padStart(digits, "0").replace(/0+$/, "");
  return text ? `${whole}.${text}` : `${whole}`;
}

function short(hex, head = 6, tail = 4) {
  if (typeof hex !== "string" || hex.length <= head + tail + 1) return hex ?? "";
  return `${hex.slice(0, head)}…${hex.slice(-tail)}`;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function pill(status) {
  return el("span", { class: `pill pill-${status}`, text: status.replace("_", " ") });
}

function reputationBar(score) {
  if (score === null || score === undefined) return el("span", { class: "muted", text: "–" });
  const pct = Math.max(0, Math.min(1, Number(score))) * 100;
  const level = pct >= 50 ? "good" : pct >= 20 ? "fair" : "poor";
  const fill = el("span", { class: `bar-fill bar-${level}` });
  fill.style.width = `${pct.toFixed(1)}%`;
  return el(
    "span",
    { class: "rep", title: `reputation ${Number(score).toFixed(4)}` },
    el("span", { class: "bar" }, fill),
    el("span", { class: "rep-num", text: Number(score).toFixed(2) }),
  );
}

// A stable colour per model hash, so experts of one model are easy to pick out.
function modelTag(hash) {
  let h = 0;
  for (const c of hash || "") h = (h * 31 + c.charCodeAt(0)) >>> 0;
  const tag = el("span", { class: "model mono", title: hash, text: short(hash, 8, 4) });
  tag.style.setProperty("--hue", String(h % 360));
  return tag;
}

function renderExperts(experts) {
  const body = $("experts");
  const rows = experts.map((e) => {
    const seen = e.seen || {};
    const latency = seen.latency_ms === null || seen.latency_ms === undefined ? "–" : `${seen.latency_ms.toFixed(1)} ms`;
    const failed = (seen.failures || 0) + (seen.timeouts || 0);
    const calls = el("span", { text: String(seen.calls || 0) });
    const callsCell = el("td", { class: "num" }, calls);
    if (failed) callsCell.append(el("span", { class: "bad small", text: ` (${failed} failed)` }));
    const slashed = wei(e.slashed);
    return el(
      "tr",
      { id: `expert-${e.expert_id}`, "data-expert-id": String(e.expert_id), class: `row-${e.status}` },
      el("td", { class: "num strong", text: String(e.expert_id) }),
      el("td", {}, modelTag(e.model_hash)),
      el("td", { class: "mono", title: e.operator, text: short(e.operator) }),
      el("td", { class: "num", text: formatWei(e.price) }),
      el("td", { class: "num", text: formatWei(e.stake) }),
      el("td", {}, pill(e.status)),
      el("td", {}, reputationBar(e.reputation)),
      callsCell,
      el("td", { class: "num", text: latency }),
      el("td", { class: e.disputes_lost ? "num bad" : "num", text: String(e.disputes_lost) }),
      el("td", { class: slashed ? "num bad" : "num", text: formatWei(slashed) }),
    );
  });
  body.replaceChildren(...rows);
  $("experts-empty").hidden = experts.length > 0;

  const active = experts.filter((e) => e.status === "active").length;
  const stake = experts.reduce((sum, e) => sum + wei(e.stake), 0n);
  const volume = experts.reduce((sum, e) => sum + wei(e.volume), 0n);
  const slashed = experts.reduce((sum, e) => sum + wei(e.slashed), 0n);
  const calls = experts.reduce((sum, e) => sum + ((e.seen && e.seen.calls) || 0), 0);
  const models = new Set(experts.map((e) => e.model_hash)).size;
  const operators = new Set(experts.map((e) => e.operator)).size;
  $("total-experts").textContent = String(experts.length);
  $("total-experts-sub").textContent = `${active} active · ${models} models · ${operators} operators`;
  $("total-stake").textContent = formatWei(stake);
  $("total-stake-sub").textContent = slashed ? `${formatWei(slashed)} slashed` : "nothing slashed";
  $("total-paid-sub").textContent = `${formatWei(volume)} redeemed on chain, all clients`;
  $("total-calls").textContent = String(calls);
  const timed = experts.filter((e) => e.seen && e.seen.latency_ms !== null && e.seen.latency_ms !== undefined);
  $("total-calls-sub").textContent = timed.length
    ? `mean latency ${(timed.reduce((s, e) => s + e.seen.latency_ms, 0) / timed.length).toFixed(1)} ms`
    : "answered for this gateway's client";
}

function renderDisputes(disputes) {
  const rows = disputes.map((d) => {
    const guilty = wei(d.guilty_stake);
    const innocent = wei(d.innocent_stake);
    const total = guilty + innocent;
    const share = total > 0n ? Number((guilty * 1000n) / total) / 10 : 0;
    const bar = el("span", { class: total > 0n ? "votebar" : "votebar votebar-none" }, el("span", { class: "vote-guilty" }));
    bar.firstChild.style.width = `${share}%`;
    const voters = `${d.voters} ${d.voters === 1 ? "voter" : "voters"}`;
    const votes = el(
      "td",
      { title: `stake voting guilty · innocent (${voters})` },
      bar,
      el("span", { class: "small", text: ` ${voters} · ${formatWei(guilty)} · ${formatWei(innocent)}` }),
    );
    return el(
      "tr",
      { id: `dispute-${d.dispute_id}`, "data-dispute-id": String(d.dispute_id) },
      el("td", { class: "num strong", text: String(d.dispute_id) }),
      el("td", {}, pill(d.status)),
      el("td", { class: "num", text: String(d.expert_id) }),
      el("td", { class: "mono", title: d.challenger, text: d.mine ? "this client" : short(d.challenger) }),
      votes,
      el("td", { class: wei(d.slashed) ? "num bad" : "num", text: formatWei(d.slashed) }),
    );
  });
  $("disputes").replaceChildren(...rows);
  $("disputes-empty").hidden = disputes.length > 0;
  const open = disputes.filter((d) => d.status === "open").length;
  const guilty = disputes.filter((d) => d.status === "guilty").length;
  $("total-disputes").textContent = String(disputes.length);
  $("total-disputes-sub").textContent = `${open} open · ${guilty} guilty`;
}

function renderBalances(b) {
  $("bal-client").textContent = short(b.client, 10, 6);
  $("bal-client").title = b.client;
  $("bal-escrow").textContent = formatWei(b.escrow);
  $("bal-available").textContent = formatWei(b.available);
  $("bal-spent").textContent = formatWei(b.spent);
  $("bal-redeemed").textContent = formatWei(b.redeemed);
  $("bal-claimable").textContent = formatWei(b.claimable);
  $("total-paid").textContent = formatWei(b.spent);
}

async function getJson(path) {
  const response = await fetch(path, { cache: "no-store", headers: { Accept: "application/json" } });
  const body = await response.json();
  if (!response.ok) throw new Error((body.error && body.error.message) || `HTTP ${response.status}`);
  return body;
}

function setConnection(state, text) {
  $("conn").dataset.state = state;
  $("conn-text").textContent = text;
}

async function refresh() {
  const [experts, disputes, balances] = await Promise.allSettled([
    getJson("/v1/experts"),
    getJson("/v1/disputes"),
    getJson("/v1/balances"),
  ]);
  if (experts.status === "fulfilled") renderExperts(experts.value.experts);
  if (disputes.status === "fulfilled") renderDisputes(disputes.value.disputes);
  if (balances.status === "fulfilled") renderBalances(balances.value);
  const failed = [experts, disputes, balances].filter((r) => r.status === "rejected");
  if (failed.length) {
    setConnection("error", `update failed: ${failed[0].reason.message}`);
  } else {
    setConnection("live", `live · updated ${new Date().toLocaleTimeString()}`);
  }
}

async function loop() {
  try {
    await refresh();
  } catch (err) {
    setConnection("error", `update failed: ${err.message}`);
  }
  setTimeout(loop, POLL_MS);
}

loop();
