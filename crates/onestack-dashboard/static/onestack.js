// OneStack dashboard: progressive enhancement only (every page works as plain HTML forms).
'use strict';
