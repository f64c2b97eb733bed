// mnist-cnn web page: a drawing pad and an upload area that send images to POST /api/predict,
// a result panel that shows what the model thinks, and a "Look inside" panel that, while open,
// asks POST /api/explain how it got there. In number mode the pad is wide, both the pad and
// uploads are read as a whole number ("mode": "number"), and the answer is the number, a tile
// per digit and the digits' boxes over the image. Plain JavaScript, no dependencies, nothing
// loaded from another origin.
"use strict";

(() => {
  const MAX_UPLOAD_BYTES = Number(document.body.dataset.maxUploadBytes) || 10 * 1024 * 1024;
  // While a stroke goes on, ask the server at most this often (and once the pen pauses):
  // fast enough to feel live, slow enough not to queue requests behind each other.
  const DEBOUNCE_MS = 180;
  const MAX_WAIT_MS = 500;
  // Stroke width on the 280x280 pad: a digit drawn to fill the pad then has strokes about
  // as thick, relative to its size, as MNIST's. The preprocessing adjusts the rest.
  const PEN_WIDTH = 20;
  // A runner-up is worth naming in a "not sure" answer when it has at least this probability.
  const RUNNER_UP_MIN = 0.05;
  // Photos are shrunk in the browser above this many pixels (the server refuses more than
  // 40 MP, and a 48 MP phone photo is common) or over the upload limit in bytes; the
  // model sees 28x28 pixels, so a long side of 3000 pixels loses nothing it needs.
  const SHRINK_ABOVE_PIXELS = 12_000_000;
  const SHRUNK_LONG_SIDE = 3000;
  const SHRUNK_JPEG_QUALITY = 0.9;
  // What a multipart body adds around the file (boundaries, headers): the server's limit is
  // on the whole body.
  const MULTIPART_ALLOWANCE = 4096;
  // The pad in number mode, in pad pixels: as tall as the digit pad (so the pen draws digits
  // of the same size), three digits' width on wide screens, two on phones, where a 3:1 pad
  // would leave a finger too little height to write in.
  const DIGIT_PAD = [280, 280];
  const NUMBER_PAD = [840, 280];
  const NUMBER_PAD_NARROW = [560, 280];
  const narrowScreen = window.matchMedia("(max-width: 600px)");

  const $ = (id) => document.getElementById(id);
  const pad = $("pad");
  const padWrap = pad.parentElement;
  const padBoxes = $("pad-boxes");
  const padHelpText = $("pad-help-text");
  const previewWrap = $("preview-wrap");
  const previewBoxes = $("preview-boxes");
  const digitResult = $("digit-result");
  const barsTitle = $("bars-title");
  const barsList = $("bars");
  const numberResult = $("number-result");
  const numberEl = $("number");
  const numberConfidence = $("number-confidence");
  const numberDetail = $("number-detail");
  const tilesEl = $("tiles");
  const insideNote = $("inside-note");
  const layout = document.querySelector(".layout");
  const modeRadios = Array.from(document.querySelectorAll('input[name="mode"]'));
  const ctx = pad.getContext("2d");
  const padHint = $("pad-hint");
  const undoButton = $("undo");
  const invertButton = $("invert");
  const clearButton = $("clear");
  const predictButton = $("predict");
  const fileInput = $("file");
  const dropzone = $("dropzone");
  const preview = $("preview");
  const resultCard = $("result-card");
  const digitEl = $("digit");
  const confidenceEl = $("confidence");
  const runnerUpEl = $("runner-up");
  const modelInput = $("model-input");
  const modelInputEmpty = $("model-input-empty");
  const messageEl = $("message");
  const announceEl = $("announce");
  const metaEl = $("meta");
  const stripDigit = $("strip-digit");
  const stripMain = $("strip-main");
  const stripDetail = $("strip-detail");
  const bars = Array.from(document.querySelectorAll("#bars .bar"));
  const tabs = Array.from(document.querySelectorAll('[role="tab"]'));
  const defaultMeta = metaEl.textContent;

  const percent = (p) => {
    const v = 100 * p;
    if (v >= 99.95 || v === 0) return `${v.toFixed(0)}%`;
    if (v < 0.1) return "<0.1%";
    return `${v.toFixed(1)}%`;
  };

  // ------------------------------------------------------------------ result panel

  // The answer strip (narrow screens) repeats the result card's answer in one line.
  function setStrip(digit, main, detail, state) {
    stripDigit.textContent = digit;
    stripDigit.classList.toggle("empty", state === "empty" || state === "error");
    stripDigit.classList.toggle("unsure", state === "unsure");
    stripMain.textContent = main;
    stripMain.classList.toggle("unsure", state === "unsure");
    stripMain.classList.toggle("error", state === "error");
    stripDetail.textContent = detail;
  }

  // "digit" (one digit, the default) or "number" (a whole number, digit by digit).
  let mode = "digit";
  const numberMode = () => mode === "number";

  function resetResult(text = numberMode() ? "Write a number or upload a photo of one." : "Draw or upload one to begin.") {
    resetNumber(text);
    digitEl.textContent = "?";
    digitEl.classList.add("empty");
    digitEl.classList.remove("unsure");
    resultCard.classList.remove("unsure");
    confidenceEl.textContent = "No digit yet";
    confidenceEl.classList.remove("unsure");
    runnerUpEl.textContent = text;
    if (!numberMode()) setStrip("?", "No digit yet", text, "empty");
    modelInput.hidden = true;
    modelInput.removeAttribute("src");
    modelInput.alt = "";
    modelInputEmpty.hidden = false;
    for (const bar of bars) {
      bar.classList.remove("top");
      bar.querySelector(".bar-fill").style.width = "0";
      bar.querySelector(".bar-value").textContent = "–";
    }
    metaEl.textContent = defaultMeta;
    hideMessage();
    resetInside();
  }

  // Advice for each reason the server gives for a "not sure" answer; the server's own
  // message says what it found.
  const UNSURE_ADVICE = {
    ambiguous: "Try again with a clearer digit, large and centred.",
    not_a_digit: "Draw or photograph one digit from 0 to 9.",
    several_marks: "Draw one digit at a time, with nothing else in the picture.",
  };

  const sentence = (text) => {
    const t = String(text || "").trim();
    if (!t) return "";
    const s = t.charAt(0).toUpperCase() + t.slice(1);
    return /[.!?]$/.test(s) ? s : `${s}.`;
  };

  const aDigit = (d) => `${d === 8 ? "an" : "a"} ${d}`;

  // "a 4, or a 9": the runner-up only when it is a real contender.
  function likelyDigits(top3) {
    const [first, second] = top3;
    const names = [aDigit(first.digit)];
    if (second && second.probability >= RUNNER_UP_MIN) names.push(aDigit(second.digit));
    return names.join(", or ");
  }

  function showPrediction(data, { announce }) {
    hideMessage();
    // The server decides whether it is sure ("ok") or not ("unsure", with a reason).
    const unsure = data.status === "unsure";
    digitEl.textContent = String(data.digit);
    digitEl.classList.remove("empty");
    digitEl.classList.toggle("unsure", unsure);
    resultCard.classList.toggle("unsure", unsure);
    confidenceEl.classList.toggle("unsure", unsure);
    const withProbability = (t) => `${t.digit} (${percent(t.probability)})`;
    const reason = (unsure && data.reason) || {};
    const likely = likelyDigits(data.top3);
    if (unsure) {
      confidenceEl.textContent = "Not sure";
      // The words are in the message below; this line gives the numbers.
      runnerUpEl.textContent = `Top: ${data.top3.slice(0, 2).map(withProbability).join(", ")}`;
      showMessage(
        `Not sure: this looks most like ${likely}.`,
        [sentence(reason.message), UNSURE_ADVICE[reason.code] || ""].filter(Boolean).join(" "),
        "warn",
      );
      setStrip(String(data.digit), "Not sure", `Most like ${likely}`, "unsure");
    } else {
      const others = data.top3.slice(1).map(withProbability);
      confidenceEl.textContent = `${percent(data.confidence)} sure`;
      runnerUpEl.textContent = others.length ? `Next: ${others.join(", ")}` : "";
      setStrip(String(data.digit), confidenceEl.textContent, runnerUpEl.textContent, "ok");
    }
    modelInput.src = data.input_28x28;
    modelInput.alt = `The 28 by 28 pixel image the model saw, showing the digit as it classified it`;
    modelInput.hidden = false;
    modelInputEmpty.hidden = true;
    data.probabilities.forEach((p, d) => {
      const bar = bars[d];
      bar.classList.toggle("top", d === data.digit);
      bar.querySelector(".bar-fill").style.width = `${(100 * p).toFixed(2)}%`;
      bar.querySelector(".bar-value").textContent = percent(p);
    });
    const model = data.model || {};
    metaEl.textContent = `${model.description || model.architecture || "model"} · ${model.file || ""} · answered in ${data.elapsed_ms} ms`;
    if (announce) {
      announceEl.textContent = unsure
        ? `Not sure. This looks most like ${likely}. ${sentence(reason.message)}`.trim()
        : `The model thinks this is ${aDigit(data.digit)}, ${percent(data.confidence)} sure.`;
    }
  }

  // ------------------------------------------------------------------ number answers

  // Advice for a "not sure" number, by the reason's code.
  const NUMBER_ADVICE = {
    segmentation: "Write the digits apart from each other, on one line.",
    ambiguous: "Write that digit again, more clearly.",
    not_a_digit: "Write only digits from 0 to 9, on one line.",
  };

  function clearBoxes() {
    padBoxes.replaceChildren();
    previewBoxes.replaceChildren();
  }

  function resetNumber(text) {
    numberEl.textContent = "?";
    numberEl.style.removeProperty("--chars");
    numberEl.classList.add("empty");
    numberEl.classList.remove("unsure");
    numberConfidence.textContent = "No number yet";
    numberConfidence.classList.remove("unsure");
    numberDetail.textContent = text;
    tilesEl.replaceChildren();
    clearBoxes();
    if (numberMode()) setStrip("?", "No number yet", text, "empty");
  }

  // Each digit's box over the image it was found in: percentages of the image's size, so
  // that the boxes follow the pad or the preview at whatever size CSS shows them.
  function drawBoxes(layer, digits, size) {
    if (!size || !size.width || !size.height) {
      layer.replaceChildren();
      return;
    }
    layer.replaceChildren(
      ...digits.map((d) => {
        const [x0, y0, x1, y1] = d.box;
        const box = document.createElement("div");
        box.className = d.status === "unsure" ? "box unsure" : "box";
        box.style.left = `${(100 * x0) / size.width}%`;
        box.style.top = `${(100 * y0) / size.height}%`;
        box.style.width = `${(100 * (x1 - x0)) / size.width}%`;
        box.style.height = `${(100 * (y1 - y0)) / size.height}%`;
        const label = document.createElement("span");
        label.className = "box-label";
        label.textContent = d.status === "unsure" ? `${d.digit}?` : String(d.digit);
        box.append(label);
        return box;
      }),
    );
  }

  function tile(d, k, n) {
    const unsure = d.status === "unsure";
    const li = document.createElement("li");
    li.className = unsure ? "tile unsure" : "tile";
    const img = document.createElement("img");
    img.className = "pixelated";
    img.width = img.height = 56;
    img.src = d.input_28x28;
    img.alt = `Digit ${k} of ${n}: the 28 by 28 pixel image the model read`;
    const digit = document.createElement("p");
    digit.className = "tile-digit";
    digit.textContent = String(d.digit);
    const sure = document.createElement("p");
    sure.className = "tile-confidence";
    // Not sure in words, as the single digit's answer has it; the numbers are in the title.
    sure.textContent = unsure ? "Not sure" : percent(d.confidence);
    if (unsure) li.title = `Most like ${likelyDigits(d.top3)}: ${sentence((d.reason || {}).message)}`;
    li.append(img, digit, sure);
    return li;
  }

  function showNumber(data, { announce, source }) {
    hideMessage();
    const unsure = data.status === "unsure";
    const digits = data.digits || [];
    numberEl.textContent = data.number;
    numberEl.style.setProperty("--chars", String(Math.max(1, data.number.length)));
    numberEl.classList.remove("empty");
    numberEl.classList.toggle("unsure", unsure);
    resultCard.classList.toggle("unsure", unsure);
    numberConfidence.classList.toggle("unsure", unsure);
    const count = `${digits.length} digit${digits.length === 1 ? "" : "s"}`;
    const reason = (unsure && data.reason) || {};
    const doubtful = digits.filter((d) => d.status === "unsure").length;
    if (unsure) {
      numberConfidence.textContent = "Not sure";
      numberDetail.textContent = doubtful ? `${count}, ${doubtful} of them unsure` : `${count}; where they part is unsure`;
      showMessage(
        `Not sure: this looks most like ${data.number}.`,
        [sentence(reason.message), NUMBER_ADVICE[reason.code] || ""].filter(Boolean).join(" "),
        "warn",
      );
      setStrip(data.number, "Not sure", `Most like ${data.number}`, "unsure");
    } else {
      numberConfidence.textContent = `${percent(data.confidence)} sure`;
      numberDetail.textContent = `${count}, read one by one`;
      setStrip(data.number, numberConfidence.textContent, numberDetail.textContent, "ok");
    }
    tilesEl.replaceChildren(...digits.map((d, i) => tile(d, i + 1, digits.length)));
    clearBoxes();
    if (source === "canvas") drawBoxes(padBoxes, digits, { width: pad.width, height: pad.height });
    else drawBoxes(previewBoxes, digits, data.image);
    const model = data.model || {};
    metaEl.textContent = `${model.description || model.architecture || "model"} · ${model.file || ""} · answered in ${data.elapsed_ms} ms`;
    if (announce) {
      announceEl.textContent = unsure
        ? `Not sure. This looks most like ${data.number}. ${sentence(reason.message)}`.trim()
        : `The model reads the number ${data.number}, ${percent(data.confidence)} sure.`;
    }
  }

  // What people should read for each error code the API returns; the server's own
  // message follows as the detail.
  const FRIENDLY = {
    no_digit: {
      canvas: "The drawing is empty or too small: draw a digit, large and centred.",
      upload: "No digit found in this image. Try a photo of a single digit, dark on light paper or light on dark.",
    },
    unsupported_image: "This file is not an image the server can read. Use a PNG, JPEG, GIF, BMP, WebP or TIFF.",
    unsupported_media_type: "This file is not an image the server can read. Use a PNG, JPEG, GIF, BMP, WebP or TIFF.",
    image_too_large: "This image has too many pixels. Scale it down and try again.",
    too_large: "This file is too large to upload.",
    network: "The server could not be reached. Is it still running?",
  };

  // The same, where a number is asked for.
  const FRIENDLY_NUMBER = {
    no_digit: {
      canvas: "The drawing is empty or too small: write a number, its digits large and side by side.",
      upload: "No number found in this image. Try a photo of one line of digits, dark on light paper or light on dark.",
    },
  };

  function showError(error, source) {
    const entry = (numberMode() && FRIENDLY_NUMBER[error.code]) || FRIENDLY[error.code];
    const text = (entry && typeof entry === "object" ? entry[source] : entry) || "Something went wrong.";
    showMessage(text, error.message || "", "error");
    setStrip("?", "No answer", text, "error");
    announceEl.textContent = text;
  }

  function showMessage(text, detail, kind) {
    messageEl.replaceChildren(document.createTextNode(text));
    if (detail && detail !== text) {
      const span = document.createElement("span");
      span.className = "detail";
      span.textContent = detail.charAt(0).toUpperCase() + detail.slice(1);
      messageEl.append(span);
    }
    messageEl.classList.toggle("warn", kind === "warn");
    // An error alerts screen readers (role="alert"). A note about a result is not a live
    // region: #announce says it once, not again at every update while a finger draws.
    if (kind === "warn") messageEl.removeAttribute("role");
    else messageEl.setAttribute("role", "alert");
    messageEl.hidden = false;
  }

  function hideMessage() {
    messageEl.hidden = true;
    messageEl.replaceChildren();
  }

  // ------------------------------------------------------------------ look inside

  const inside = $("inside");
  const insideBody = $("inside-body");
  const insideStatus = $("inside-status");
  const insideError = $("inside-error");
  const insideContent = $("inside-content");
  const insideStages = $("inside-stages");
  const insideInput = $("inside-input");
  const insideSaliency = $("inside-saliency");
  const insideActivations = $("inside-activations");
  const legendDigits = Array.from(document.querySelectorAll("#inside-legend .legend-digit"));
  const insideMethod = $("inside-method");
  const insideHint = insideStatus.textContent.replace(/\s+/g, " ").trim();

  // What each preprocessing stage shows, for the alt text of its picture (the caption under
  // it is the server's short label; an unknown stage gets that label).
  const STAGE_WORDS = {
    grayscale: "the image in grayscale",
    cleaned: "the ink left once the background and any ruled lines are taken out, white on black",
    digit: "only the pieces of ink kept as the digit",
    cropped: "the digit cropped to its box",
    fitted: "the digit scaled to fit in 20 by 20 pixels, with strokes as thick as MNIST's",
    centred: "the digit centred by its mass in the 28 by 28 pixel image the model reads",
  };
  const LAYER_WORDS = { conv1: "first", conv2: "second" };

  let asked = null; // {body, headers} of the request whose answer is on screen
  let insideShows = null; // the `asked` the panel shows (or is fetching)
  let insideInflight = null; // the AbortController of the /api/explain request in flight
  let insideSequence = 0; // answers to older explain requests are ignored

  function setInsideStatus(text) {
    insideStatus.textContent = text;
  }

  function resetInside() {
    // Nothing on screen to explain (cleared, or the last request failed).
    asked = null;
    insideShows = null;
    if (insideInflight) insideInflight.abort();
    insideInflight = null;
    insideSequence++;
    insideBody.removeAttribute("aria-busy");
    insideContent.hidden = true;
    insideError.hidden = true;
    insideError.replaceChildren();
    setInsideStatus(insideHint);
  }

  function figure(src, alt, caption, { width, height, pixelated }) {
    const fig = document.createElement("figure");
    fig.className = "inside-figure";
    const img = document.createElement("img");
    img.src = src;
    img.alt = alt;
    if (width && height) {
      img.width = width;
      img.height = height;
    }
    if (pixelated) img.className = "pixelated";
    const cap = document.createElement("figcaption");
    cap.textContent = caption;
    fig.append(img, cap);
    return fig;
  }

  function showInside(data) {
    const stages = data.stages || [];
    const steps = stages.length - 1;
    insideStages.replaceChildren(
      ...stages.map((stage, i) => {
        const alt =
          stage.name === "original"
            ? "Your image, as the server received it"
            : `Preprocessing step ${i} of ${steps}: ${STAGE_WORDS[stage.name] || stage.label}`;
        const li = document.createElement("li");
        li.append(
          figure(stage.png, alt, stage.label, {
            width: stage.width,
            height: stage.height,
            pixelated: stage.scale > 1,
          }),
        );
        return li;
      }),
    );
    const digit = aDigit(data.digit);
    insideInput.src = data.input_28x28;
    insideInput.alt = "The 28 by 28 pixel image the model read";
    insideSaliency.src = data.saliency.png;
    insideSaliency.alt =
      `Occlusion saliency for the answer ${data.digit}: the 28 by 28 input, red where erasing ` +
      `the ink lowers the odds of ${digit}, blue where it raises them`;
    insideSaliency.title = sentence(data.saliency.meaning);
    for (const el of legendDigits) el.textContent = String(data.digit);
    const patch = data.saliency.patch;
    insideMethod.textContent =
      `Each ${patch}×${patch} patch of the input was erased in turn: the more the odds of ` +
      `${digit} fall without it, the redder it is; blue where erasing it makes ${digit} more likely.`;
    const layers = Object.entries(data.activations || {});
    if (layers.length) {
      insideActivations.replaceChildren(
        ...layers.map(([name, layer]) => {
          const [channels, height, width] = layer.shape;
          const which = LAYER_WORDS[name] ? `the ${LAYER_WORDS[name]} convolution` : "a convolution";
          const alt =
            `${name}: the ${channels} feature maps of ${which}, each ${height} by ${width} ` +
            `pixels, bright where a filter responds to the digit`;
          return figure(layer.png, alt, `${name}: ${channels} feature maps of ${height}×${width}`, {
            pixelated: true,
          });
        }),
      );
    } else {
      const note = document.createElement("p");
      note.className = "help";
      note.textContent = "The feature maps need the PyTorch backend; this server runs ONNX Runtime.";
      insideActivations.replaceChildren(note);
    }
    insideContent.hidden = false;
  }

  function showInsideError(error) {
    const text = "Could not look inside the model.";
    insideError.replaceChildren(document.createTextNode(text));
    const detail = document.createElement("span");
    detail.className = "detail";
    const message = String(error.message || "").trim();
    detail.textContent = message ? sentence(message) : "";
    const retry = document.createElement("button");
    retry.type = "button";
    retry.className = "button secondary retry";
    retry.textContent = "Try again";
    retry.addEventListener("click", () => refreshInside());
    insideError.append(detail, retry);
    insideError.hidden = false;
    insideContent.hidden = true;
    setInsideStatus("");
  }

  async function refreshInside() {
    if (!asked) {
      resetInside();
      return;
    }
    if (insideShows === asked) return; // already shown, or on its way
    if (insideInflight) insideInflight.abort();
    const controller = new AbortController();
    insideInflight = controller;
    const mine = ++insideSequence;
    const request = asked;
    insideShows = request;
    insideBody.setAttribute("aria-busy", "true");
    insideError.hidden = true;
    setInsideStatus("Looking inside the model…");
    try {
      const response = await fetch("/api/explain", {
        method: "POST",
        body: request.body,
        headers: request.headers,
        signal: controller.signal,
      });
      let data = null;
      try {
        data = await response.json();
      } catch {
        data = null;
      }
      if (mine !== insideSequence) return;
      if (response.ok && data) {
        showInside(data);
        setInsideStatus("");
      } else {
        insideShows = null; // so that opening the panel again, or "Try again", asks again
        showInsideError(
          (data && data.error) || { message: `The server answered ${response.status} ${response.statusText}.` },
        );
      }
    } catch (err) {
      if (err.name === "AbortError") return;
      if (mine === insideSequence) {
        insideShows = null;
        showInsideError({ message: `The server could not be reached (${err.message || err}).` });
      }
    } finally {
      if (mine === insideSequence) {
        insideBody.removeAttribute("aria-busy");
        insideInflight = null;
      }
    }
  }

  inside.addEventListener("toggle", () => {
    if (inside.open) refreshInside();
  });

  // ------------------------------------------------------------------ talking to the API

  let inflight = null; // the AbortController of the request in flight
  let sequence = 0; // answers to older requests are ignored

  async function predict(body, headers, source, { announce = true } = {}) {
    if (inflight) inflight.abort();
    const controller = new AbortController();
    inflight = controller;
    const mine = ++sequence;
    resultCard.setAttribute("aria-busy", "true");
    try {
      const response = await fetch("/api/predict", {
        method: "POST",
        body,
        headers,
        signal: controller.signal,
      });
      let data = null;
      try {
        data = await response.json();
      } catch {
        data = null; // a proxy's HTML error page, say
      }
      if (mine !== sequence) return;
      if (response.ok && data && data.mode === "number") {
        // Look inside explains one digit: a number leaves it nothing to explain.
        showNumber(data, { announce, source });
        asked = null;
      } else if (response.ok && data) {
        showPrediction(data, { announce });
        // The panel explains the answer on screen: the same body, sent to /api/explain. Not
        // in the middle of a stroke: the answer to the finished stroke follows, and each
        // explanation costs the server far more than a prediction.
        asked = { body, headers };
        if (inside.open && !current) refreshInside();
      } else {
        const error = (data && data.error) || {
          code: response.status === 413 ? "too_large" : `http_${response.status}`,
          message: `The server answered ${response.status} ${response.statusText}.`,
        };
        resetResult(source === "canvas" ? "Keep drawing." : "Try another image.");
        showError(error, source);
      }
    } catch (err) {
      if (err.name === "AbortError") return;
      if (mine === sequence) showError({ code: "network", message: String(err.message || err) }, source);
    } finally {
      if (mine === sequence) {
        resultCard.removeAttribute("aria-busy");
        inflight = null;
        if (source === "upload") revealResult();
      }
    }
  }

  // On a phone the result sits below the upload area: bring it into view after an upload
  // (never while drawing, when the page must stay still under the finger).
  function revealResult() {
    const box = resultCard.getBoundingClientRect();
    if (box.top > window.innerHeight * 0.6) {
      const smooth = !window.matchMedia("(prefers-reduced-motion: reduce)").matches;
      resultCard.scrollIntoView({ behavior: smooth ? "smooth" : "auto", block: "start" });
    }
  }

  // ------------------------------------------------------------------ drawing pad

  const strokes = []; // each stroke: an array of [x, y] in pad pixels
  let current = null; // the stroke being drawn
  let inverted = false; // false: white ink on black (as MNIST), true: black on white
  let debounceTimer = 0;
  let maxWaitTimer = 0;

  const ink = () => (inverted ? "#000" : "#fff");
  const paper = () => (inverted ? "#fff" : "#000");

  function paint() {
    ctx.fillStyle = paper();
    ctx.fillRect(0, 0, pad.width, pad.height);
    for (const stroke of strokes) drawStroke(stroke);
    padHint.hidden = strokes.length > 0;
    padHint.classList.toggle("dark", inverted);
    pad.classList.toggle("inverted", inverted);
    undoButton.disabled = strokes.length === 0;
  }

  function drawStroke(points, from = 0) {
    ctx.strokeStyle = ink();
    ctx.fillStyle = ink();
    ctx.lineWidth = PEN_WIDTH;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    if (points.length === 1) {
      ctx.beginPath();
      ctx.arc(points[0][0], points[0][1], PEN_WIDTH / 2, 0, 2 * Math.PI);
      ctx.fill();
      return;
    }
    ctx.beginPath();
    const start = Math.max(0, from - 1);
    ctx.moveTo(points[start][0], points[start][1]);
    for (let i = start + 1; i < points.length; i++) ctx.lineTo(points[i][0], points[i][1]);
    ctx.stroke();
  }

  function padPoint(event) {
    // The pad is 280x280 pixels inside, whatever size CSS gives it on screen.
    const rect = pad.getBoundingClientRect();
    return [
      ((event.clientX - rect.left) * pad.width) / rect.width,
      ((event.clientY - rect.top) * pad.height) / rect.height,
    ];
  }

  function sendPad({ announce, evenIfEmpty = false }) {
    clearTimeout(debounceTimer);
    clearTimeout(maxWaitTimer);
    debounceTimer = maxWaitTimer = 0;
    // Updates while drawing skip an empty pad; the Predict button sends it anyway, and the
    // server's answer (422 no_digit) becomes the message that asks for a digit.
    if (strokes.length === 0 && !evenIfEmpty) return;
    const image = pad.toDataURL("image/png");
    const body = JSON.stringify(numberMode() ? { image, mode: "number" } : { image });
    predict(body, { "Content-Type": "application/json" }, "canvas", { announce });
  }

  function schedulePad() {
    clearTimeout(debounceTimer);
    debounceTimer = setTimeout(() => sendPad({ announce: false }), DEBOUNCE_MS);
    if (!maxWaitTimer) maxWaitTimer = setTimeout(() => sendPad({ announce: false }), MAX_WAIT_MS);
  }

  pad.addEventListener("pointerdown", (event) => {
    if (event.button !== 0 && event.pointerType === "mouse") return;
    event.preventDefault();
    pad.setPointerCapture(event.pointerId);
    current = [padPoint(event)];
    strokes.push(current);
    padBoxes.replaceChildren(); // the boxes were of the drawing before this stroke
    paint();
  });

  pad.addEventListener("pointermove", (event) => {
    if (!current) return;
    // Coalesced events carry every sample of a fast stroke, not one per frame.
    const samples = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
    const from = current.length;
    for (const e of samples.length ? samples : [event]) current.push(padPoint(e));
    drawStroke(current, from);
    schedulePad();
  });

  function endStroke() {
    if (!current) return;
    current = null;
    sendPad({ announce: true });
  }

  pad.addEventListener("pointerup", endStroke);
  pad.addEventListener("pointercancel", endStroke);
  pad.addEventListener("keydown", (event) => {
    if (event.key === "Delete" || event.key === "Backspace" || event.key === "Escape") {
      event.preventDefault();
      clearPad();
    } else if (event.key === "Enter") {
      event.preventDefault();
      sendPad({ announce: true, evenIfEmpty: true });
    } else if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z") {
      event.preventDefault();
      undo();
    }
  });

  function clearPad() {
    strokes.length = 0;
    current = null;
    if (inflight) inflight.abort();
    sequence++;
    resultCard.removeAttribute("aria-busy");
    paint();
    resetResult();
    announceEl.textContent = "The drawing area is clear.";
  }

  function undo() {
    strokes.pop();
    padBoxes.replaceChildren(); // of the drawing before the undo
    paint();
    if (strokes.length) sendPad({ announce: true });
    else clearPad();
  }

  clearButton.addEventListener("click", clearPad);
  predictButton.addEventListener("click", () => sendPad({ announce: true, evenIfEmpty: true }));
  undoButton.addEventListener("click", undo);
  invertButton.addEventListener("click", () => {
    inverted = !inverted;
    invertButton.setAttribute("aria-pressed", String(inverted));
    paint();
    if (strokes.length) sendPad({ announce: true });
  });

  // ------------------------------------------------------------------ upload

  let previewUrl = null;
  let uploadSequence = 0; // a file chosen while another is being shrunk wins
  let lastFile = null; // sent again when the mode changes

  // The image's width and height as the browser would show it, from its header (an <img>
  // loads without decoding every pixel); null for what the browser cannot read (TIFF).
  function imageSize(url) {
    return new Promise((resolve) => {
      const img = new Image();
      img.onload = () => resolve({ width: img.naturalWidth, height: img.naturalHeight });
      img.onerror = () => resolve(null);
      img.src = url;
    });
  }

  function hasTransparency(context, width, height) {
    const pixels = context.getImageData(0, 0, width, height).data;
    for (let i = 3; i < pixels.length; i += 4) if (pixels[i] < 255) return true;
    return false;
  }

  // A smaller copy of a big photo, or null when the file can go as it is (or the browser
  // cannot decode it: the server reads more formats, and says what is wrong with the rest).
  async function shrink(file, url) {
    const size = await imageSize(url);
    if (!size) return null;
    const tooBig = file.size > MAX_UPLOAD_BYTES - MULTIPART_ALLOWANCE;
    if (size.width * size.height <= SHRINK_ABOVE_PIXELS && !tooBig) return null;
    let bitmap;
    try {
      // "from-image": turned upright by the photo's EXIF orientation, as the server would.
      bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
    } catch {
      return null;
    }
    const scale = Math.min(1, SHRUNK_LONG_SIDE / Math.max(bitmap.width, bitmap.height));
    const canvas = document.createElement("canvas");
    canvas.width = Math.max(1, Math.round(bitmap.width * scale));
    canvas.height = Math.max(1, Math.round(bitmap.height * scale));
    const context = canvas.getContext("2d");
    context.imageSmoothingQuality = "high";
    context.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    bitmap.close();
    // JPEG has no transparency: a digit drawn on a transparent background stays a PNG.
    const type =
      file.type !== "image/jpeg" && hasTransparency(context, canvas.width, canvas.height) ? "image/png" : "image/jpeg";
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, type, SHRUNK_JPEG_QUALITY));
    canvas.width = canvas.height = 0; // free the pixels now, not at the next collection
    if (!blob) return null;
    const base = (file.name || "image").replace(/\.[^.]*$/, "");
    return new File([blob], `${base}.${type === "image/png" ? "png" : "jpg"}`, { type });
  }

  async function sendFile(file) {
    if (!file) return;
    const mine = ++uploadSequence;
    lastFile = file;
    selectTab(tabs[1], { focus: false });
    previewBoxes.replaceChildren();
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    preview.src = previewUrl;
    preview.alt = `Your image: ${file.name || "pasted image"}`;
    preview.hidden = false;
    let upload = file;
    try {
      resultCard.setAttribute("aria-busy", "true");
      upload = (await shrink(file, previewUrl)) || file;
    } catch {
      upload = file; // shrinking is a courtesy: the server still gets to say what is wrong
    }
    if (mine !== uploadSequence) return;
    if (upload.size > MAX_UPLOAD_BYTES - MULTIPART_ALLOWANCE) {
      // No point in sending what the server will refuse.
      resultCard.removeAttribute("aria-busy");
      resetResult("Try another image.");
      const mb = (MAX_UPLOAD_BYTES / 1048576).toFixed(0);
      const message =
        upload === file
          ? `The file is ${(file.size / 1048576).toFixed(1)} MB; the limit is ${mb} MB.`
          : `Even made smaller, the image is ${(upload.size / 1048576).toFixed(1)} MB; the limit is ${mb} MB.`;
      showError({ code: "too_large", message }, "upload");
      revealResult();
      return;
    }
    const form = new FormData();
    form.append("image", upload, upload.name || file.name || "image");
    if (numberMode()) form.append("mode", "number");
    predict(form, {}, "upload");
  }

  // A browser cannot show every format the server reads (TIFF): hide the broken preview.
  preview.addEventListener("error", () => {
    preview.hidden = true;
    previewBoxes.replaceChildren();
  });

  fileInput.addEventListener("change", () => {
    sendFile(fileInput.files[0]);
    // Choosing the same file again must fire "change" again.
    fileInput.value = "";
  });

  for (const type of ["dragenter", "dragover"]) {
    dropzone.addEventListener(type, (event) => {
      event.preventDefault();
      dropzone.classList.add("dragging");
    });
  }
  for (const type of ["dragleave", "dragend", "drop"]) {
    dropzone.addEventListener(type, () => dropzone.classList.remove("dragging"));
  }
  // A file dropped anywhere on the page is an upload, not a navigation away from it.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => {
    event.preventDefault();
    dropzone.classList.remove("dragging");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) sendFile(file);
  });
  window.addEventListener("paste", (event) => {
    const file = Array.from(event.clipboardData?.files || []).find((f) => f.type.startsWith("image/"));
    if (file) {
      event.preventDefault();
      sendFile(file);
    }
  });

  // ------------------------------------------------------------------ tabs (ARIA pattern)

  function selectTab(tab, { focus = true } = {}) {
    for (const t of tabs) {
      const selected = t === tab;
      t.setAttribute("aria-selected", String(selected));
      t.tabIndex = selected ? 0 : -1;
      $(t.getAttribute("aria-controls")).hidden = !selected;
    }
    if (focus) tab.focus();
  }

  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => selectTab(tab));
    tab.addEventListener("keydown", (event) => {
      const moves = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 };
      if (event.key in moves) {
        event.preventDefault();
        selectTab(tabs[(moves[event.key] + tabs.length) % tabs.length]);
      }
    });
  });

  // ------------------------------------------------------------------ digit or number

  const PAD_WORDS = {
    digit: {
      hint: "Draw a digit here",
      label: "Drawing area. Draw one digit with a mouse, a finger or a pen. The prediction updates as you draw.",
      help: "Draw one digit, large and centred.",
    },
    number: {
      hint: "Write a number here",
      label: "Wide drawing area. Write a number, its digits side by side on one line, with a mouse, a finger or a pen. The reading updates as you draw.",
      help: "Write the digits side by side, apart, on one line.",
    },
  };

  // The pad's shape for the mode and the screen. A drawing belongs to its shape: the pad is
  // reshaped only when it is empty (a phone turned mid-drawing keeps the drawing).
  function fitPad() {
    const [width, height] = numberMode() ? (narrowScreen.matches ? NUMBER_PAD_NARROW : NUMBER_PAD) : DIGIT_PAD;
    if (pad.width !== width || pad.height !== height) {
      pad.width = width; // resizing a canvas clears it; paint() fills it again
      pad.height = height;
    }
    padWrap.classList.toggle("wide", numberMode());
    padWrap.style.setProperty("--pad-aspect", String(width / height));
  }

  function setMode(next) {
    if (next === mode) return;
    mode = next;
    // Answers to requests of the other mode are no longer wanted.
    if (inflight) inflight.abort();
    sequence++;
    resultCard.removeAttribute("aria-busy");
    const words = PAD_WORDS[mode];
    padHint.textContent = words.hint;
    pad.setAttribute("aria-label", words.label);
    padHelpText.textContent = words.help;
    strokes.length = 0;
    current = null;
    fitPad();
    paint();
    const number = numberMode();
    resultCard.classList.toggle("number-mode", number);
    layout.classList.toggle("number-mode", number);
    digitResult.hidden = number;
    barsTitle.hidden = number;
    barsList.hidden = number;
    numberResult.hidden = !number;
    stripDigit.classList.toggle("wide", number);
    // Look inside explains one digit: in number mode it gives way to a note saying so.
    inside.hidden = number;
    insideNote.hidden = !number;
    resetResult();
    announceEl.textContent = number
      ? "Number mode: write or upload a number; each digit is read."
      : "Digit mode: draw or upload one digit.";
    // An uploaded image on screen is read again in the new mode.
    if (lastFile && !$("panel-upload").hidden) sendFile(lastFile);
  }

  for (const radio of modeRadios) {
    radio.addEventListener("change", () => {
      if (radio.checked) setMode(radio.value);
    });
  }
  narrowScreen.addEventListener("change", () => {
    if (numberMode() && strokes.length === 0) {
      fitPad();
      paint();
    }
  });

  paint();
  resetResult();
  document.body.dataset.ready = "true"; // for tests: the page's script has run
})();
