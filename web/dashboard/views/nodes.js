// Nodes of the cluster and their load (operator only): a table, and CPU and participants
// over time while the view is open; draining a node moves its rooms away.

import { get, post } from '../api.js';
import { h, table, when } from '../dom.js';
import { History, lineChart } from '../chart.js';

const POLL_MS = 2000;

export async function show(ctx, root) {
  const list = h('div', { id: 'node-table' });
  const cpuChart = h('div', { id: 'node-cpu-chart' });
  const peopleChart = h('div', { id: 'node-participants-chart' });
  root.append(h('section', { class: 'panel', id: 'nodes' }, h('h2', {}, 'Nodes'), list,
    h('h3', {}, 'CPU (share of one core)'), cpuChart, h('h3', {}, 'Participants'), peopleChart));
  const cpu = new History(90);
  const people = new History(90);
  let timer = null;
  let stopped = false;
  const poll = async () => {
    try {
      const { nodes } = await get('nodes');
      if (stopped) return;
      for (const node of nodes) {
        cpu.add(node.node_id, node.load.cpu);
        people.add(node.node_id, node.load.participants);
      }
      list.replaceChildren(table(['Node', 'Region', 'CPU', 'Rooms', 'Participants', 'Tracks', 'Forwarded pkt/s', 'Load share', 'Since', ''],
        nodes.map((node) => {
          const drain = h('button', { type: 'button', class: 'drain', disabled: node.draining }, node.draining ? 'Draining' : 'Drain');
          drain.addEventListener('click', async () => {
            try {
              await post(`nodes/${encodeURIComponent(node.node_id)}/drain`);
              ctx.status(`Node ${node.node_id} is draining.`);
            } catch (error) {
              ctx.fail(error);
            }
          });
          return { cells: [node.node_id, node.region, node.load.cpu.toFixed(2), node.load.rooms, node.load.participants,
            node.load.tracks, Math.round(node.load.forwarded_pps), node.load_share.toFixed(2), when(node.started_at), drain],
          attrs: { dataset: { nodeId: node.node_id } } };
        })));
      cpuChart.replaceChildren(lineChart(cpu.toSeries(), { format: (v) => v.toFixed(2), title: 'cpu' }));
      peopleChart.replaceChildren(lineChart(people.toSeries(), { format: (v) => String(Math.round(v)), title: 'participants' }));
    } catch (error) {
      ctx.fail(error);
    }
    if (!stopped) timer = setTimeout(poll, POLL_MS);
  };
  await poll();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
