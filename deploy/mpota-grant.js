// nginx's check of a download grant (njs 0.7, Debian's libnginx-mod-http-js), so that nginx
// sends a whole blob from a replica's verified cache without asking any replica
// (docs/operations.md, "Blobs sent by nginx"). Every rule is ota_server/grants.py's
// GrantKey.check, byte for byte; tests/test_cluster_grants.py holds the two to the same
// answers. A request this check does not accept is not refused here: it goes to a replica,
// which answers it (its 401 with the reason, a range, a signed request).
//
//   js_import mpota_grant from /etc/nginx/mpota-grant.js;
//   include /etc/nginx/mpota-grant-key.conf;     # js_var $mpota_grant_key <64 hex>; (0600)
//   js_set $mpota_grant_blob mpota_grant.blobGranted;

var crypto = require('crypto');

// The one form of a grant (ota_server/grants.py _GRANT, DEVICE_ID of device_auth.py), the
// whole Authorization value: JavaScript's `$` without the m flag is the end of the string.
var GRANT = /^Mpota-Grant id=([A-Za-z0-9][A-Za-z0-9._:-]{0,63}),exp=([1-9][0-9]{0,11}),mac=([A-Za-z0-9_-]{43})$/;
var CONTEXT = 'mpota-grant-v1';
// The furthest `exp` any checker accepts (ota_server.settings.MAX_GRANT_LIFETIME_S).
var MAX_LIFETIME_S = 86400;
var KEY = /^[0-9a-f]{64}$/;
// The request as the board sends it, not nginx's normalized $uri: a path nginx would decode
// or merge (%61, //) goes to a replica, which judges it as it does any other.
var BLOB_REQUEST = /^\/v1\/blobs\/[0-9a-f]{64}$/;
// Requests the replica answers itself (ota_server/blob_answers.py _SELF_ANSWERED): nginx's
// static module would judge a range or a condition by the file's time and size.
// Present at all is enough, even empty (r.headersIn gives "" for it, undefined when absent).
var SELF_ANSWERED = ['Range', 'If-Range', 'If-None-Match', 'If-Match', 'If-Modified-Since',
                     'If-Unmodified-Since'];

// Equal strings of equal length, without stopping at the first difference.
function sameText(a, b) {
    if (a.length !== b.length) {
        return false;
    }
    var diff = 0;
    for (var i = 0; i < a.length; i++) {
        diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
    }
    return diff === 0;
}

// Whether `header` is a grant valid at `nowS` (seconds) under the key whose hex is `keyHex`:
// GrantKey.check's rules (form, exp > now, exp <= now + 86400, the MAC).
function grantValid(header, keyHex, nowS) {
    if (typeof header !== 'string' || typeof keyHex !== 'string' || !KEY.test(keyHex)) {
        return false;
    }
    var m = GRANT.exec(header);
    if (m === null) {
        return false;
    }
    var expires = Number(m[2]);
    if (expires <= nowS || expires > nowS + MAX_LIFETIME_S) {
        return false;
    }
    var mac = crypto.createHmac('sha256', Buffer.from(keyHex, 'hex'))
        .update(CONTEXT + '\n' + m[1] + '\n' + m[2]).digest('base64url');
    return sameText(m[3], mac);
}

// The js_set variable: '1' when nginx may send the blob itself (a GET or HEAD of exactly
// /v1/blobs/<sha256>, no range or condition, a valid grant), '' otherwise.
function blobGranted(r) {
    if ((r.method !== 'GET' && r.method !== 'HEAD')
            || !BLOB_REQUEST.test(r.variables.request_uri)) {
        return '';
    }
    for (var i = 0; i < SELF_ANSWERED.length; i++) {
        if (r.headersIn[SELF_ANSWERED[i]] !== undefined) {
            return '';
        }
    }
    var key = r.variables.mpota_grant_key;
    if (typeof key !== 'string' || !KEY.test(key)) {
        r.error('mpota: $mpota_grant_key is not 64 lowercase hex digits: no grant is '
                + 'checked here (docs/operations.md, "Blobs sent by nginx")');
        return '';
    }
    return grantValid(r.headersIn.Authorization, key, Date.now() / 1000) ? '1' : '';
}

export default {blobGranted, grantValid};
