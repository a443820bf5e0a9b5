// recsql demo shop: a catalog, product pages, a cart and live recommendation panels. No framework.
(function () {
  'use strict';

  const params = new URLSearchParams(location.search);
  const KEY = params.get('key'); // optional; the demo normally runs with OPEN_ACCESS
  const CART_KEY = 'recsql_demo_cart';
  const REFRESH_MS = 4000;
  const K = 6;

  recsql.init({ key: KEY, flushInterval: 500 });

  const view = document.getElementById('view');
  let renderToken = 0;

  // --- small helpers -------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined) continue;
      if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value);
    }
    for (const child of children.flat()) {
      if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function price(p) {
    return p === null || p === undefined ? '' : `$${Number(p).toFixed(2)}`;
  }

  function currentUser() {
    return recsql.userId() || recsql.anonymousId();
  }

  // GET a read endpoint; resolves to the JSON body, or to {error} when the request fails.
  async function api(path) {
    const headers = { 'X-Anonymous-Id': recsql.anonymousId() };
    if (KEY) headers.Authorization = `Bearer ${KEY}`;
    try {
      const res = await fetch(path, { headers });
      const body = await res.json().catch(() => null);
      if (!res.ok) return { error: (body && body.error) || { code: `http_${res.status}`, message: res.statusText } };
      return body;
    } catch (err) {
      return { error: { code: 'network', message: String(err) } };
    }
  }

  // --- cart (client side) --------------------------------------------------------------------

  function cart() {
    try {
      const lines = JSON.parse(localStorage.getItem(CART_KEY) || '[]');
      return Array.isArray(lines) ? lines : [];
    } catch (err) {
      return [];
    }
  }

  function saveCart(lines) {
    try {
      localStorage.setItem(CART_KEY, JSON.stringify(lines));
    } catch (err) { /* storage unavailable: the cart lives only in this page */ }
    document.getElementById('cart-count').textContent = lines.reduce((n, l) => n + l.qty, 0);
  }

  function addToCart(item) {
    const lines = cart();
    const line = lines.find((l) => l.itemId === item.itemId);
    if (line) line.qty += 1;
    else lines.push({ itemId: item.itemId, title: item.title, price: item.price, qty: 1 });
    saveCart(lines);
    recsql.trackAddToCartEvent(item.itemId);
    afterAction();
  }

  function removeFromCart(itemId) {
    saveCart(cart().filter((l) => l.itemId !== itemId));
    recsql.trackRemoveFromCartEvent(itemId);
    afterAction();
    render();
  }

  function checkout() {
    const lines = cart();
    for (const l of lines) recsql.trackPurchaseEvent(l.itemId, Number(l.price || 0) * l.qty);
    saveCart([]);
    afterAction();
    view.replaceChildren(
      el('section', { id: 'order-done', 'data-items': lines.map((l) => l.itemId).join(' ') },
        el('h1', null, 'Thank you!'),
        el('p', null, `You bought ${lines.length} item(s). Your recommendations update as you shop.`),
        el('a', { href: '#/' }, 'Keep shopping')),
    );
    view.dataset.view = 'done';
  }

  // --- item lists ----------------------------------------------------------------------------

  // A recommendation list; a click on an item is tracked with the list's recommendationId.
  function fillList(ol, body, emptyText) {
    const recId = body && body.recommendationId;
    ol.dataset.recommendationId = recId || '';
    if (!body || body.error) {
      ol.replaceChildren(el('li', { class: 'muted error' }, body ? body.error.message : 'unavailable'));
      return;
    }
    if (!body.items.length) {
      ol.replaceChildren(el('li', { class: 'muted' }, emptyText));
      return;
    }
    ol.replaceChildren(...body.items.map((it) => el('li', { 'data-item-id': it.itemId },
      el('a', {
        href: `#/item/${encodeURIComponent(it.itemId)}`,
        onclick: () => { if (recId) recsql.trackClickEvent(it.itemId, recId); },
      }, it.title || it.itemId),
      el('span', { class: 'price' }, price(it.price)),
      it.reason ? el('small', { class: 'reason' }, it.reason) : null)));
  }

  async function refreshPanels() {
    const user = encodeURIComponent(currentUser());
    const [recs, trending] = await Promise.all([
      api(`/v1/users/${user}/recommendations?k=${K}`),
      api(`/v1/trending?k=${K}`),
    ]);
    for (const [id, body, empty] of [
      ['panel-recommended', recs, 'Browse a little and recommendations appear here.'],
      ['panel-trending', trending, 'Nothing trending yet.'],
    ]) {
      const panel = document.getElementById(id);
      fillList(panel.querySelector('ol'), body, empty);
      panel.dataset.refreshed = String(Date.now());
    }
  }

  // Send what was just tracked, then show its effect.
  async function afterAction() {
    await recsql.flush();
    await refreshPanels();
  }

  // --- views ---------------------------------------------------------------------------------

  async function renderList(token) {
    const body = await api('/v1/items?limit=48');
    if (token !== renderToken) return;
    if (body.error) {
      view.replaceChildren(el('p', { class: 'error' }, body.error.message));
      return;
    }
    view.replaceChildren(
      el('h1', null, 'Products'),
      el('ul', { class: 'grid', id: 'product-list' }, body.items.map((it) => el('li', { 'data-item-id': it.itemId },
        el('a', { href: `#/item/${encodeURIComponent(it.itemId)}` },
          el('strong', null, it.title || it.itemId),
          el('span', { class: 'muted' }, it.category || ''),
          el('span', { class: 'price' }, price(it.price)))))),
    );
    view.dataset.view = 'list';
  }

  async function renderItem(token, itemId) {
    const item = await api(`/v1/items/${encodeURIComponent(itemId)}`);
    if (token !== renderToken) return;
    if (item.error) {
      view.replaceChildren(el('p', { class: 'error' }, item.error.message), el('a', { href: '#/' }, 'All products'));
      view.dataset.view = 'missing';
      return;
    }
    recsql.trackViewEvent(item.itemId);
    const similar = el('ol', { class: 'items' });
    const together = el('ol', { class: 'items' });
    view.replaceChildren(el('article', { id: 'item', 'data-item-id': item.itemId },
      el('a', { href: '#/' }, '\u2190 All products'),
      el('h1', null, item.title || item.itemId),
      el('p', { class: 'muted' }, item.category || ''),
      el('p', { class: 'price' }, price(item.price), item.inStock ? '' : ' (out of stock)'),
      el('button', { id: 'add-to-cart', type: 'button', onclick: () => addToCart(item) }, 'Add to cart'),
      el('section', { id: 'similar', 'data-list': 'similar' }, el('h2', null, 'Similar items'), similar),
      el('section', { id: 'bought-together', 'data-list': 'bought-together' },
        el('h2', null, 'Bought together'), together)));
    view.dataset.view = 'item';
    afterAction();
    const id = encodeURIComponent(item.itemId);
    const [sim, bt] = await Promise.all([
      api(`/v1/items/${id}/similar?k=${K}`),
      api(`/v1/items/${id}/bought-together?k=${K}`),
    ]);
    if (token !== renderToken) return;
    fillList(similar, sim, 'No similar items yet.');
    fillList(together, bt, 'Nobody bought this with anything yet.');
  }

  function renderCart() {
    const lines = cart();
    const total = lines.reduce((s, l) => s + Number(l.price || 0) * l.qty, 0);
    view.replaceChildren(
      el('h1', null, 'Cart'),
      lines.length
        ? el('ul', { id: 'cart-lines' }, lines.map((l) => el('li', { 'data-item-id': l.itemId },
          el('a', { href: `#/item/${encodeURIComponent(l.itemId)}` }, l.title || l.itemId),
          ` \u00d7 ${l.qty} `,
          el('span', { class: 'price' }, price(Number(l.price || 0) * l.qty)),
          el('button', { type: 'button', class: 'remove', onclick: () => removeFromCart(l.itemId) }, 'Remove'))))
        : el('p', { class: 'muted', id: 'cart-empty' }, 'Your cart is empty.'),
      lines.length ? el('p', { class: 'price' }, `Total ${price(total)}`) : null,
      lines.length ? el('button', { id: 'checkout', type: 'button', onclick: checkout }, 'Check out') : null,
    );
    view.dataset.view = 'cart';
  }

  function render() {
    const token = ++renderToken;
    const hash = location.hash.replace(/^#/, '') || '/';
    const match = hash.match(/^\/item\/(.+)$/);
    window.scrollTo(0, 0);
    if (match) return renderItem(token, decodeURIComponent(match[1]));
    if (hash === '/cart') return renderCart();
    return renderList(token);
  }

  // --- sign in -------------------------------------------------------------------------------

  function showUser() {
    const who = document.getElementById('whoami');
    const user = recsql.userId();
    who.dataset.userId = currentUser();
    who.textContent = user ? `Signed in as ${user}` : 'Anonymous';
    document.getElementById('signin-button').textContent = user ? 'Switch' : 'Sign in';
  }

  document.getElementById('signin').addEventListener('submit', async (event) => {
    event.preventDefault();
    const input = document.getElementById('signin-user');
    const user = input.value.trim();
    if (!user) return;
    await recsql.identify(user);
    input.value = '';
    showUser();
    await refreshPanels();
  });

  window.addEventListener('hashchange', render);
  setInterval(() => { if (!document.hidden) refreshPanels(); }, REFRESH_MS);
  saveCart(cart());
  showUser();
  render();
  refreshPanels();
})();
