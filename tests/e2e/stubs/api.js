// Test stand-in for ComfyUI's /scripts/api.js: an EventTarget plus apiURL like the host's (prefix /api).
class StubApi extends EventTarget {
  apiURL(route) {
    return "/api" + route;
  }
}
export const api = new StubApi();
